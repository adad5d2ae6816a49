//! The mirror's record of what its tree holds: the entries of the last sync, each maybe marked
//! unknown (a sync changed it and did not finish). A small binary format, written whole.
//!
//! Layout: magic, entry count (u64), then per entry: flags (u8: kind, unknown bit), mode, uid,
//! gid (u32 each), size (u64), mtime seconds (i64), nanoseconds (u32), path length (u32) and
//! bytes, target length (u32, `u32::MAX` for none) and bytes; then the end marker. Integers are
//! little-endian. Anything else (a torn write, another version) reads as "no record".

use crate::entry::check_entries;
use crate::{Entry, Kind};

const MAGIC: &[u8] = b"kiln-contextsync record v1\n";
const END: &[u8] = b"\nend of record\n";
const UNKNOWN: u8 = 0x10;
const NO_TARGET: u32 = u32::MAX;

/// One recorded entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Recorded {
    pub entry: Entry,
    /// A sync set out to change this path and did not finish: what is on disk is not known.
    pub unknown: bool,
}

pub(crate) fn encode(entries: &[Recorded]) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAGIC.len() + END.len() + 8 + entries.len() * 64);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    for r in entries {
        let e = &r.entry;
        let kind = match e.kind {
            Kind::Dir => 1,
            Kind::File => 2,
            Kind::Symlink => 3,
        };
        out.push(kind | if r.unknown { UNKNOWN } else { 0 });
        out.extend_from_slice(&e.mode.to_le_bytes());
        out.extend_from_slice(&e.uid.to_le_bytes());
        out.extend_from_slice(&e.gid.to_le_bytes());
        out.extend_from_slice(&e.size.to_le_bytes());
        out.extend_from_slice(&e.mtime_sec.to_le_bytes());
        out.extend_from_slice(&e.mtime_nsec.to_le_bytes());
        // Paths and targets are checked to be at most 4096 bytes before they are recorded.
        out.extend_from_slice(&(e.path.len() as u32).to_le_bytes());
        out.extend_from_slice(e.path.as_bytes());
        match &e.target {
            Some(t) => {
                out.extend_from_slice(&(t.len() as u32).to_le_bytes());
                out.extend_from_slice(t.as_bytes());
            }
            None => out.extend_from_slice(&NO_TARGET.to_le_bytes()),
        }
    }
    out.extend_from_slice(END);
    out
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.buf.len() < n {
            return None;
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Some(head)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    fn string(&mut self, len: u32) -> Option<String> {
        let bytes = self.take(usize::try_from(len).ok()?)?;
        String::from_utf8(bytes.to_vec()).ok()
    }
}

/// The entries of a record, or `None` when it is not a whole, well-formed record of this
/// version (the mirror is then rebuilt from scratch).
pub(crate) fn decode(bytes: &[u8]) -> Option<Vec<Recorded>> {
    let mut r = Reader {
        buf: bytes.strip_prefix(MAGIC)?.strip_suffix(END)?,
    };
    let count = u64::from_le_bytes(r.array()?);
    let count = usize::try_from(count).ok()?;
    // Each entry takes at least 41 bytes: a count beyond that is a corrupt one.
    if count > r.buf.len() / 41 {
        return None;
    }
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let [flags] = r.array()?;
        let kind = match flags & !UNKNOWN {
            1 => Kind::Dir,
            2 => Kind::File,
            3 => Kind::Symlink,
            _ => return None,
        };
        let mode = u32::from_le_bytes(r.array()?);
        let uid = u32::from_le_bytes(r.array()?);
        let gid = u32::from_le_bytes(r.array()?);
        let size = u64::from_le_bytes(r.array()?);
        let mtime_sec = i64::from_le_bytes(r.array()?);
        let mtime_nsec = u32::from_le_bytes(r.array()?);
        let path_len = u32::from_le_bytes(r.array()?);
        let path = r.string(path_len)?;
        let target = match u32::from_le_bytes(r.array()?) {
            NO_TARGET => None,
            len => Some(r.string(len)?),
        };
        out.push(Recorded {
            entry: Entry {
                path,
                kind,
                mode,
                uid,
                gid,
                size,
                mtime_sec,
                mtime_nsec,
                target,
            },
            unknown: flags & UNKNOWN != 0,
        });
    }
    if !r.buf.is_empty() {
        return None;
    }
    // The record is the daemon's own file, but a damaged one must not become a way to
    // delete outside the mirror: it passes the checks a client's entries pass.
    let entries: Vec<Entry> = out.iter().map(|r| r.entry.clone()).collect();
    check_entries(&entries).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_and_a_torn_one_reads_as_none() {
        let entries = vec![
            Recorded {
                entry: Entry {
                    path: String::new(),
                    kind: Kind::Dir,
                    mode: 0o755,
                    uid: 1,
                    gid: 2,
                    size: 0,
                    mtime_sec: -5,
                    mtime_nsec: 7,
                    target: None,
                },
                unknown: false,
            },
            Recorded {
                entry: Entry {
                    path: "l".into(),
                    kind: Kind::Symlink,
                    mode: 0o777,
                    uid: 0,
                    gid: 0,
                    size: 0,
                    mtime_sec: 1_700_000_000,
                    mtime_nsec: 999_999_999,
                    target: Some("../x".into()),
                },
                unknown: true,
            },
        ];
        let bytes = encode(&entries);
        assert_eq!(decode(&bytes), Some(entries));
        for cut in [0, 10, bytes.len() / 2, bytes.len() - 1] {
            assert_eq!(decode(&bytes[..cut]), None, "cut at {cut}");
        }
        let mut zeroed = bytes.clone();
        let n = zeroed.len();
        zeroed[n - 20..].fill(0);
        assert_eq!(decode(&zeroed), None);
    }
}
