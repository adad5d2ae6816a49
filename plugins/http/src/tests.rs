#![allow(clippy::unwrap_used)]

use super::*;
use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The timeout of the tests that do not test timeouts: long enough never to fire.
const T: Duration = Duration::from_secs(60);

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
    let path = download(&p, t.path(), &NoCancel, T).unwrap();
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
        download(&p, &out2, &NoCancel, T).unwrap(),
        out2.join("report.csv")
    );

    let out3 = t.path().join("3");
    fs::create_dir(&out3).unwrap();
    let p = Payload {
        url: format!("{base}/moved"),
        checksum: None,
        filename: Some("given".into()),
    };
    let path = download(&p, &out3, &NoCancel, T).unwrap();
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
    let e = download(&p, t.path(), &NoCancel, T)
        .unwrap_err()
        .to_string();
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
    let e = download(&p, t.path(), &NoCancel, T)
        .unwrap_err()
        .to_string();
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
    assert!(download(&p, t.path(), &NoCancel, T).is_err());
    let p = Payload {
        url: format!("{base}/f"),
        checksum: None,
        filename: Some("../escape".into()),
    };
    assert!(download(&p, t.path(), &NoCancel, T).is_err());
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
        url_basename("https://h/caf%C3%A9%zz").as_deref(),
        Some("café%zz")
    );
    assert_eq!(parse_timeout("2s"), Some(Duration::from_secs(2)));
    assert_eq!(parse_timeout(" 30 "), Some(Duration::from_secs(30)));
    assert_eq!(parse_timeout("500ms"), Some(Duration::from_millis(500)));
    assert_eq!(parse_timeout("2m"), Some(Duration::from_secs(120)));
    for bad in ["", "0s", "s", "1h", "-1s", "1.5s", "99999999999999999999m"] {
        assert_eq!(parse_timeout(bad), None, "{bad}");
    }
}

/// A server on 127.0.0.1 that reads each request, writes `answer` (nothing when empty) and then
/// holds the connection open without another byte. Every accepted connection is announced on
/// the returned channel.
fn stalling(answer: &'static [u8]) -> (String, mpsc::Receiver<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in l.incoming() {
            let Ok(mut s) = stream else { continue };
            read_request(&s);
            let _ = s.write_all(answer);
            held.push(s);
            let _ = tx.send(());
        }
    });
    (format!("http://{addr}"), rx)
}

fn read_request(s: &TcpStream) {
    let mut r = BufReader::new(s);
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
    }
}

/// Runs `f` on a thread and returns its result, failing the test if it has not ended within
/// `secs` seconds (the bug these tests catch is a hang).
fn within<R: Send + 'static>(secs: u64, f: impl FnOnce() -> R + Send + 'static) -> R {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(secs))
        .unwrap_or_else(|_| panic!("did not end within {secs} s"))
}

fn get(url: String) -> Payload {
    Payload {
        url,
        checksum: None,
        filename: Some("f".into()),
    }
}

#[test]
fn a_stalled_server_times_out_naming_the_url() {
    for (answer, waiting) in [
        (&b""[..], "waiting for the response headers"),
        (
            &b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nten bytes."[..],
            "waiting for the next bytes of the body",
        ),
    ] {
        let (base, _accepted) = stalling(answer);
        let url = format!("{base}/x");
        let t = tempfile::tempdir().unwrap();
        let out = t.path().to_owned();
        let p = get(url.clone());
        let e = within(20, move || {
            download(&p, &out, &NoCancel, Duration::from_secs(1)).unwrap_err()
        });
        assert!(matches!(e, Error::Timeout { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            format!(
                "failed to download {url}: timed out after 1s {waiting} \
                 (set KILN_HTTP_TIMEOUT to wait longer)"
            )
        );
    }
    // The cache key asks the server too (HEAD) and must not hang either.
    let (base, _accepted) = stalling(b"");
    let p = get(format!("{base}/x"));
    let e = within(20, move || {
        current_version(&p, &NoCancel, Duration::from_millis(500)).unwrap_err()
    });
    assert!(
        e.to_string()
            .contains("timed out after 500ms waiting for the response headers"),
        "{e}"
    );
}

#[test]
fn a_slow_download_that_keeps_moving_succeeds() {
    // 12 bytes, one every 150 ms: 1.8 s in all, longer than the 1 s timeout, which bounds
    // silence, not the whole transfer.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        read_request(&s);
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n")
            .unwrap();
        for b in b"slow but on." {
            std::thread::sleep(Duration::from_millis(150));
            s.write_all(&[*b]).unwrap();
        }
    });
    let t = tempfile::tempdir().unwrap();
    let p = get(format!("http://{addr}/slow"));
    let path = download(&p, t.path(), &NoCancel, Duration::from_secs(1)).unwrap();
    assert_eq!(fs::read(path).unwrap(), b"slow but on.");
}

/// Cancelled once `flag` is set.
struct Flag(Arc<AtomicBool>);
impl Cancel for Flag {
    fn cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

#[test]
fn cancellation_stops_a_stalled_download() {
    for answer in [
        &b""[..],
        &b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npart"[..],
    ] {
        let (base, accepted) = stalling(answer);
        let flag = Arc::new(AtomicBool::new(false));
        let cancel = Flag(flag.clone());
        let t = tempfile::tempdir().unwrap();
        let out = t.path().to_owned();
        let p = get(format!("{base}/x"));
        let done = std::thread::spawn(move || download(&p, &out, &cancel, T));
        // Cancel once the request is on the wire, i.e. while the download waits.
        accepted.recv_timeout(Duration::from_secs(20)).unwrap();
        flag.store(true, Ordering::SeqCst);
        let e = within(10, move || done.join().unwrap().unwrap_err());
        assert!(matches!(e, Error::Cancelled(_)), "{e:?}");
        assert_eq!(
            PluginError::from(e).kind,
            kiln_plugin_sdk::proto::ErrorKind::Cancelled
        );
    }
}
