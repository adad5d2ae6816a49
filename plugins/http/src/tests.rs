#![allow(clippy::unwrap_used)]

use super::*;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;

struct NoCancel;
impl Cancel for NoCancel {
    fn cancelled(&self) -> bool {
        false
    }
}

/// A one-thread HTTP/1.0 server on 127.0.0.1 serving `routes` (path → status line, extra
/// headers, body) for at most `max` connections.
fn serve(routes: Vec<(&'static str, &'static str, String, Vec<u8>)>, max: usize) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in l.incoming().take(max) {
            let Ok(mut s) = stream else { continue };
            let mut line = String::new();
            let mut r = BufReader::new(s.try_clone().unwrap());
            r.read_line(&mut line).unwrap();
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).unwrap() == 0 || h == "\r\n" {
                    break;
                }
            }
            let target = line.split_whitespace().nth(1).unwrap_or("/");
            let path = target.split('?').next().unwrap_or("/").to_owned();
            let (status, headers, body) = routes
                .iter()
                .find(|(p, ..)| *p == path)
                .map(|(_, st, h, b)| (*st, h.clone(), b.clone()))
                .unwrap_or(("404 Not Found", String::new(), b"nope".to_vec()));
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{headers}\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes());
            let _ = s.write_all(&body);
        }
    });
    format!("http://{addr}")
}

fn sha256(b: &[u8]) -> String {
    let mut h = Hasher::new(Algo::Sha256);
    h.update(b);
    h.finish()
}

#[test]
fn downloads_with_name_mode_and_mtime() {
    let base = serve(
        vec![
            (
                "/files/app.txt",
                "200 OK",
                "Last-Modified: Wed, 21 Oct 2015 07:28:00 GMT\r\n".into(),
                b"hello".to_vec(),
            ),
            (
                "/dl",
                "200 OK",
                "Content-Disposition: attachment; filename=\"report.csv\"\r\n".into(),
                b"a,b".to_vec(),
            ),
            (
                "/moved",
                "302 Found",
                "Location: /files/app.txt\r\n".into(),
                Vec::new(),
            ),
        ],
        10,
    );
    let t = tempfile::tempdir().unwrap();
    let p = Payload {
        url: format!("{base}/files/app.txt?x=1"),
        checksum: Some(sha256(b"hello")),
        filename: None,
    };
    let path = download(&p, t.path(), &NoCancel).unwrap();
    assert_eq!(path, t.path().join("app.txt"));
    assert_eq!(fs::read(&path).unwrap(), b"hello");
    let md = fs::metadata(&path).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(md.mode() & 0o7777, 0o600);
    assert_eq!(md.mtime(), 1_445_412_480);

    let out2 = t.path().join("2");
    fs::create_dir(&out2).unwrap();
    let p = Payload {
        url: format!("{base}/dl"),
        checksum: None,
        filename: None,
    };
    assert_eq!(
        download(&p, &out2, &NoCancel).unwrap(),
        out2.join("report.csv")
    );

    let out3 = t.path().join("3");
    fs::create_dir(&out3).unwrap();
    let p = Payload {
        url: format!("{base}/moved"),
        checksum: None,
        filename: Some("given".into()),
    };
    let path = download(&p, &out3, &NoCancel).unwrap();
    assert_eq!(fs::read(path).unwrap(), b"hello");
}

#[test]
fn errors_name_the_url() {
    let base = serve(
        vec![("/f", "200 OK", String::new(), b"content".to_vec())],
        10,
    );
    let t = tempfile::tempdir().unwrap();
    let url = format!("{base}/missing");
    let p = Payload {
        url: url.clone(),
        checksum: None,
        filename: None,
    };
    let e = download(&p, t.path(), &NoCancel).unwrap_err().to_string();
    assert_eq!(
        e,
        format!("failed to download {url}: server answered 404 Not Found")
    );

    let wrong = format!("sha256:{}", "0".repeat(64));
    let p = Payload {
        url: format!("{base}/f"),
        checksum: Some(wrong.clone()),
        filename: None,
    };
    let e = download(&p, t.path(), &NoCancel).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!(
            "checksum mismatch for {base}/f: expected {wrong}, got sha256:"
        )),
        "{e}"
    );
    assert!(!t.path().join("f").exists());

    let p = Payload {
        url: format!("{base}/f"),
        checksum: Some("md5:abc".into()),
        filename: None,
    };
    assert!(download(&p, t.path(), &NoCancel).is_err());
    let p = Payload {
        url: format!("{base}/f"),
        checksum: None,
        filename: Some("../escape".into()),
    };
    assert!(download(&p, t.path(), &NoCancel).is_err());
}

#[test]
fn small_parsers() {
    assert_eq!(
        url_basename("https://h/a/b.tar.gz?x#y").as_deref(),
        Some("b.tar.gz")
    );
    assert_eq!(url_basename("https://h/a%20b").as_deref(), Some("a b"));
    assert_eq!(url_basename("https://h/"), None);
    assert_eq!(url_basename("https://h/x/.."), None);
    assert_eq!(url_basename("https://h/%2e%2e"), None);
    assert_eq!(url_basename("https://h"), None);
    assert_eq!(
        disposition_name("attachment; filename=\"../../x.txt\"").as_deref(),
        Some("x.txt")
    );
    assert_eq!(
        disposition_name("attachment; filename=a; filename*=UTF-8''b%20c").as_deref(),
        Some("b c")
    );
    assert_eq!(
        parse_http_date("Thu, 01 Jan 1970 00:00:10 GMT"),
        Some(UNIX_EPOCH + Duration::from_secs(10))
    );
    assert_eq!(parse_http_date("garbage"), None);
}
