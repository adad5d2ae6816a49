//! Times the phases of syncs of a real directory into a mirror (a measurement aid, not a
//! benchmark with targets): `cargo run --release -p kiln-contextsync --example sync-timing --
//! CONTEXT MIRROR_DIR`. Runs a first sync, a no-op sync, and a sync after one file's mtime
//! changed (the last is left changed).

use std::path::Path;
use std::time::Instant;

use kiln_contextsync::{open_for_send, read_ignore, scan, Mirror};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, src, store] = args.as_slice() else {
        return Err("usage: sync-timing CONTEXT MIRROR_DIR".into());
    };
    let (src, store) = (Path::new(src), Path::new(store));
    for round in ["first", "no-op", "touch one"] {
        if round == "touch one" {
            let first = scan(src, &read_ignore(src, Path::new("Dockerfile"))?)?
                .into_iter()
                .find(|e| e.kind == kiln_contextsync::Kind::File)
                .ok_or("no file in the context")?;
            std::fs::File::options()
                .append(true)
                .open(src.join(&first.path))?
                .set_modified(std::time::SystemTime::now())?;
        }
        let t0 = Instant::now();
        let ignore = read_ignore(src, Path::new("Dockerfile"))?;
        let entries = scan(src, &ignore)?;
        let t_scan = t0.elapsed();
        let n = entries.len();
        let t1 = Instant::now();
        let mut mirror = Mirror::open(store)?;
        let t_open = t1.elapsed();
        let t2 = Instant::now();
        let mut plan = mirror.plan(entries.clone())?;
        let t_plan = t2.elapsed();
        let t3 = Instant::now();
        for p in plan.send().to_vec() {
            let mut f = open_for_send(src, &entries, &p)?;
            mirror.write_file(&mut plan, &p, &mut f)?;
        }
        let t_write = t3.elapsed();
        let t4 = Instant::now();
        let stats = mirror.finish(plan)?;
        let t_finish = t4.elapsed();
        println!(
            "{round}: {n} entries; scan {t_scan:.2?}, open {t_open:.2?}, plan {t_plan:.2?}, \
             write {t_write:.2?}, finish {t_finish:.2?}; received {} files, {} bytes",
            stats.files, stats.bytes
        );
    }
    Ok(())
}
