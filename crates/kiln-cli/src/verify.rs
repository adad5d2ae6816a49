//! `kiln verify [--repair]`: checks the whole store. Every blob is hashed (streamed) against
//! its digest and size, every layer's recorded exported forms are checked, and every cache
//! record must name layers that exist. Problems are printed by digest with what uses them
//! (layers, cache records), then a summary; the exit status is 1 when something is wrong.
//! `--repair` removes what is wrong and what was derived from it, so that the next build
//! rebuilds or fetches it again: a changed blob (with the layers' records of it as their
//! exported form), an unreadable layer record, a cache record whose layers are gone.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use kiln_cache::{CacheIndex, ListedRecord};
use kiln_snapshot::verify::{Problem, ProblemKind};
use kiln_snapshot::{LayerId, SnapshotterKind, Store};
use kiln_types::Digest;

use crate::du::{human_size, write_stdout};

/// The cache index file of a store (kiln-engine's `gc` opens the same one).
const CACHE_INDEX: &str = "cache.redb";

/// `kiln verify` flags.
#[derive(clap::Args)]
pub struct VerifyArgs {
    /// Remove what is wrong (changed blobs and what was derived from them, cache records whose
    /// layers are gone), so that the next build rebuilds or fetches it again.
    #[arg(long)]
    repair: bool,
}

/// A cache record whose snapshot names layers that are not in the store.
struct BrokenRecord {
    key: Digest,
    description: String,
    missing: Vec<LayerId>,
}

/// Runs `kiln verify` on the store at `root`.
pub fn run(root: &Path, args: &VerifyArgs) -> Result<ExitCode> {
    if !root.join("blobs").is_dir() {
        write_stdout(&format!(
            "no store at {}: nothing to verify\n",
            root.display()
        ))?;
        return Ok(ExitCode::SUCCESS);
    }
    let store = Store::open_with(root, SnapshotterKind::Copy)
        .with_context(|| format!("opening the store {}", root.display()))?;
    let report = store
        .verify(|_, _| {})
        .with_context(|| format!("verifying the store {}", root.display()))?;
    // The index is only read when there is one: verifying never creates it.
    let records = if root.join(CACHE_INDEX).is_file() {
        let index = CacheIndex::open(&root.join(CACHE_INDEX))
            .with_context(|| format!("opening the cache index of {}", root.display()))?;
        let records = index.list().context("reading the cache index")?;
        Some((index, records))
    } else {
        None
    };
    let listed: &[ListedRecord] = records.as_ref().map_or(&[], |(_, r)| r.as_slice());
    let broken = broken_records(&store, listed);

    let mut out = String::new();
    for p in &report.problems {
        out.push_str(&describe(p, listed));
    }
    for b in &broken {
        let ids: Vec<&str> = b.missing.iter().map(|l| l.0.as_str()).collect();
        let _ = writeln!(
            out,
            "cache record {}{}: names missing layer {}",
            b.key,
            shown_description(&b.description),
            ids.join(", ")
        );
    }
    let problems = report.problems.len() + broken.len();
    let _ = writeln!(
        out,
        "checked {} blobs ({}), {} layers, {} cache records: {}",
        report.blobs,
        human_size(report.bytes),
        report.layers,
        listed.len(),
        match problems {
            0 => "no problem".to_owned(),
            1 => "1 problem".to_owned(),
            n => format!("{n} problems"),
        }
    );
    if problems == 0 {
        write_stdout(&out)?;
        return Ok(ExitCode::SUCCESS);
    }
    if !args.repair {
        out.push_str(
            "run `kiln verify --repair` to remove them: the next build rebuilds or fetches \
             again what it needs\n",
        );
        write_stdout(&out)?;
        return Ok(ExitCode::from(1));
    }

    // Repairs exclude a collector, which could otherwise be choosing among what is removed.
    let _lock = store.gc_lock().context("locking the store for repair")?;
    let mut left = 0;
    for p in &report.problems {
        match (&p.digest, &p.kind) {
            (Some(d), ProblemKind::Changed { .. } | ProblemKind::WrongSize { .. }) => {
                let dropped = store
                    .drop_blob(d)
                    .with_context(|| format!("removing blob {d}"))?;
                let _ = write!(out, "repaired: removed blob {d}");
                if !dropped.layers.is_empty() {
                    let ids: Vec<&str> = dropped.layers.iter().map(|l| l.0.as_str()).collect();
                    let _ = write!(out, " and its record in layer {}", ids.join(", "));
                }
                out.push('\n');
            }
            (_, ProblemKind::BadRecord { path, .. }) => {
                store
                    .drop_layer_record(path)
                    .with_context(|| format!("removing {}", path.display()))?;
                let _ = writeln!(out, "repaired: removed {}", path.display());
            }
            _ => {
                left += 1;
                let _ = writeln!(out, "not repaired (remove it by hand): {p}");
            }
        }
    }
    if let Some((index, _)) = &records {
        let keys: Vec<Digest> = broken.iter().map(|b| b.key).collect();
        index
            .remove(&keys)
            .context("removing broken cache records")?;
        for k in &keys {
            let _ = writeln!(out, "repaired: removed cache record {k}");
        }
    }
    write_stdout(&out)?;
    Ok(if left == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// One problem, with what uses the blob: the layers recording it, and the cache records whose
/// result holds those layers.
fn describe(p: &Problem, records: &[ListedRecord]) -> String {
    let mut s = format!("{p}\n");
    for l in &p.layers {
        let _ = writeln!(s, "  used by layer {} (its exported form)", l.0);
    }
    let mut users: BTreeMap<Digest, &str> = BTreeMap::new();
    for r in records {
        if r.record
            .snapshot
            .layers
            .iter()
            .any(|l| p.layers.contains(l))
        {
            users.insert(r.key, &r.usage.description);
        }
    }
    for (key, description) in users {
        let _ = writeln!(
            s,
            "  used by cache record {key}{}",
            shown_description(description)
        );
    }
    s
}

fn shown_description(d: &str) -> String {
    if d.is_empty() {
        String::new()
    } else {
        format!(" ({d})")
    }
}

/// The cache records whose result names a layer the store does not have (GC removes records
/// with their layers; a record left behind is a miss that `--repair` removes).
fn broken_records(store: &Store, records: &[ListedRecord]) -> Vec<BrokenRecord> {
    records
        .iter()
        .filter_map(|r| {
            let missing: Vec<LayerId> = r
                .record
                .snapshot
                .layers
                .iter()
                .filter(|l| !store.has_layer(l))
                .cloned()
                .collect();
            (!missing.is_empty()).then(|| BrokenRecord {
                key: r.key,
                description: r.usage.description.clone(),
                missing,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_cache::{CacheRecord, RecordUse};
    use kiln_snapshot::Snapshot;

    fn record(key: &[u8], layers: Vec<LayerId>, description: &str) -> ListedRecord {
        ListedRecord {
            key: Digest::of(key),
            record: CacheRecord {
                snapshot: Snapshot { layers },
                created_unix: 0,
            },
            usage: RecordUse {
                description: description.to_owned(),
                ..RecordUse::default()
            },
        }
    }

    #[test]
    fn a_problem_names_the_layers_and_cache_records_using_its_blob() {
        let layer = LayerId("abc".to_owned());
        let p = Problem {
            digest: Some(Digest::of(b"blob")),
            kind: ProblemKind::Changed {
                actual: Digest::of(b"other"),
                size: 4,
            },
            layers: vec![layer.clone()],
        };
        let records = [
            record(b"k1", vec![layer.clone()], "[2/2] RUN make"),
            record(b"k2", vec![LayerId("zzz".to_owned())], "[1/2] FROM x"),
        ];
        let text = describe(&p, &records);
        assert!(text.starts_with(&format!("{}: changed on disk", Digest::of(b"blob"))));
        assert!(text.contains("used by layer abc"), "{text}");
        assert!(
            text.contains(&format!(
                "used by cache record {} ([2/2] RUN make)",
                Digest::of(b"k1")
            )),
            "{text}"
        );
        assert!(!text.contains(&Digest::of(b"k2").to_string()), "{text}");
    }

    #[test]
    fn records_naming_missing_layers_are_broken() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open_with(t.path().join("s"), SnapshotterKind::Copy).unwrap();
        let there = store.new_layer().unwrap().commit().unwrap();
        let gone = LayerId("gone".to_owned());
        let records = [
            record(b"ok", vec![there.clone()], ""),
            record(b"bad", vec![there, gone.clone()], "RUN x"),
        ];
        let broken = broken_records(&store, &records);
        assert_eq!(broken.len(), 1);
        assert_eq!(broken[0].key, Digest::of(b"bad"));
        assert_eq!(broken[0].missing, vec![gone]);
    }
}
