//! Limits on the header fields of untrusted tar streams (pulled layer blobs, archives unpacked by
//! ADD), so that a small hostile archive can neither exhaust memory nor make the extractor work
//! without end.
//!
//! The `tar` crate reads GNU long-name/long-link records and PAX extended headers whole into
//! memory, whatever size their header claims, and expands GNU sparse holes into zeros. Two checks
//! close that:
//! - [`HeaderGuard`] wraps the stream: the bytes read while the next entry's headers are parsed
//!   (its PAX records, long names, sparse maps, not the previous entry's data) are capped at
//!   [`MAX_HEADER_BYTES`], so the reader fails before it allocates more;
//! - [`check_entry`] then refuses entries whose names, link targets or xattrs exceed what Linux
//!   accepts, and sparse entries that expand into more holes than [`MAX_SPARSE_HOLES`].
//!
//! Every limit is far above what real images and archives use.

use std::cell::Cell;
use std::io::{self, Read};
use std::rc::Rc;

/// Longest path or link target, in bytes: Linux's `PATH_MAX` (4096) less the terminating NUL.
pub const MAX_PATH_BYTES: usize = 4095;
/// Longest path component, in bytes: Linux's `NAME_MAX`.
pub const MAX_NAME_BYTES: usize = 255;
/// Most bytes of headers (PAX records, GNU long names and links, sparse maps) before one entry.
pub const MAX_HEADER_BYTES: u64 = 1 << 20;
/// Longest xattr name: Linux's `XATTR_NAME_MAX`.
pub const MAX_XATTR_NAME_BYTES: usize = 255;
/// Largest xattr value: Linux's `XATTR_SIZE_MAX`.
pub const MAX_XATTR_VALUE_BYTES: usize = 64 * 1024;
/// Most xattrs on one entry (Linux lists at most 64 KiB of names per file anyway).
pub const MAX_XATTRS: usize = 256;
/// Most bytes of holes one GNU sparse entry may expand into: they are written out as zeros.
pub const MAX_SPARSE_HOLES: u64 = 1 << 30;

/// Tar blocks are 512 bytes; the headers of one entry, and the end-of-archive blocks, get this
/// much on top of [`MAX_HEADER_BYTES`].
const HEADER_SLACK: u64 = 16 * 512;

#[derive(Default)]
struct State {
    /// Parsing headers (inside `Entries::next`) rather than reading an entry's data.
    in_headers: Cell<bool>,
    /// Bytes still allowed while parsing headers.
    allowance: Cell<u64>,
    /// Bytes of the current entry's data read by the caller.
    data_read: Cell<u64>,
    /// Bytes the current entry occupies in the stream after its headers (data and padding):
    /// what the tar reader skips before the next header when the caller did not read it.
    footprint: Cell<u64>,
}

/// The stream under a `tar::Archive`, counting what is read while headers are parsed. Made by
/// [`HeaderGuard::new`].
pub struct GuardedReader<R> {
    inner: R,
    state: Rc<State>,
}

impl<R> GuardedReader<R> {
    /// The wrapped stream (for reading what follows the archive's end).
    pub fn into_inner(self) -> R {
        self.inner
    }
}

impl<R: Read> Read for GuardedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let s = &self.state;
        if !s.in_headers.get() {
            let n = self.inner.read(buf)?;
            s.data_read.set(s.data_read.get() + n as u64);
            return Ok(n);
        }
        let allowed = s.allowance.get();
        if allowed == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the headers of the next entry (PAX records, GNU long names, sparse maps) \
                     exceed {} bytes; refusing the archive",
                    MAX_HEADER_BYTES
                ),
            ));
        }
        let len = buf
            .len()
            .min(usize::try_from(allowed).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..len])?;
        s.allowance.set(allowed - n as u64);
        Ok(n)
    }
}

/// Caps the header bytes of every entry of a tar stream at [`MAX_HEADER_BYTES`].
///
/// ```no_run
/// # fn f(stream: impl std::io::Read) -> std::io::Result<()> {
/// let (reader, guard) = kiln_snapshot::tar_limits::HeaderGuard::new(stream);
/// let mut archive = tar::Archive::new(reader);
/// for entry in guard.entries(&mut archive)? {
///     let mut entry = entry?;
///     kiln_snapshot::tar_limits::check_entry(&mut entry).map_err(std::io::Error::other)?;
/// }
/// # Ok(()) }
/// ```
pub struct HeaderGuard {
    state: Rc<State>,
}

impl HeaderGuard {
    /// Wraps `stream`; build the `tar::Archive` on the returned reader.
    pub fn new<R: Read>(stream: R) -> (GuardedReader<R>, HeaderGuard) {
        let state = Rc::new(State::default());
        let reader = GuardedReader {
            inner: stream,
            state: state.clone(),
        };
        (reader, HeaderGuard { state })
    }

    /// The entries of `archive`, whose reader must be this guard's.
    pub fn entries<'a, R: Read>(
        &self,
        archive: &'a mut tar::Archive<GuardedReader<R>>,
    ) -> io::Result<GuardedEntries<'a, R>> {
        Ok(GuardedEntries {
            entries: archive.entries()?,
            state: self.state.clone(),
        })
    }
}

/// The entries of a guarded archive; see [`HeaderGuard`].
pub struct GuardedEntries<'a, R: Read> {
    entries: tar::Entries<'a, GuardedReader<R>>,
    state: Rc<State>,
}

impl<'a, R: Read> Iterator for GuardedEntries<'a, R> {
    type Item = io::Result<tar::Entry<'a, GuardedReader<R>>>;

    fn next(&mut self) -> Option<Self::Item> {
        let s = &self.state;
        // What the caller left unread of the previous entry is skipped first: that is data,
        // not headers.
        let unread = s.footprint.get().saturating_sub(s.data_read.get());
        s.allowance
            .set(MAX_HEADER_BYTES + HEADER_SLACK + unread.min(u64::MAX / 2));
        s.in_headers.set(true);
        let next = self.entries.next();
        s.in_headers.set(false);
        s.data_read.set(0);
        s.footprint.set(0);
        if let Some(Ok(entry)) = &next {
            // A sparse entry's size is its expanded size; its stream holds the header's.
            let stored = if entry.header().entry_type().is_gnu_sparse() {
                entry.header().entry_size().unwrap_or(0)
            } else {
                entry.size()
            };
            s.footprint.set(stored.saturating_add(511) & !511);
        }
        next
    }
}

/// The name of an entry for messages: lossy UTF-8, long names cut to their first 200 bytes.
pub fn shown_name(bytes: &[u8]) -> String {
    const SHOWN: usize = 200;
    if bytes.len() <= SHOWN {
        return String::from_utf8_lossy(bytes).into_owned();
    }
    format!(
        "{}… ({} bytes)",
        String::from_utf8_lossy(&bytes[..SHOWN]),
        bytes.len()
    )
}

/// Refuses an entry whose header fields exceed the limits of this module; the reason names the
/// field (the caller names the entry).
pub fn check_entry<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<(), String> {
    check_path("its name", &entry.path_bytes())?;
    if let Some(link) = entry.link_name_bytes() {
        check_path("its link target", &link)?;
    }
    let header = entry.header();
    if header.entry_type().is_gnu_sparse() {
        let stored = header.entry_size().map_err(|e| e.to_string())?;
        let holes = entry.size().saturating_sub(stored);
        if holes > MAX_SPARSE_HOLES {
            return Err(format!(
                "the sparse file expands to {} bytes from {stored} stored: more than {} bytes \
                 of holes",
                entry.size(),
                MAX_SPARSE_HOLES
            ));
        }
    }
    let Some(exts) = entry.pax_extensions().map_err(|e| e.to_string())? else {
        return Ok(());
    };
    let mut xattrs = 0;
    for ext in exts {
        let ext = ext.map_err(|e| format!("malformed PAX record: {e}"))?;
        let Some(name) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") else {
            continue;
        };
        xattrs += 1;
        if xattrs > MAX_XATTRS {
            return Err(format!("more than {MAX_XATTRS} xattrs"));
        }
        if name.is_empty() || name.len() > MAX_XATTR_NAME_BYTES {
            return Err(format!(
                "xattr name {:?} is {} bytes long; Linux allows 1 to {MAX_XATTR_NAME_BYTES}",
                shown_name(name),
                name.len()
            ));
        }
        if ext.value_bytes().len() > MAX_XATTR_VALUE_BYTES {
            return Err(format!(
                "xattr {:?} has a {}-byte value; Linux allows {MAX_XATTR_VALUE_BYTES}",
                shown_name(name),
                ext.value_bytes().len()
            ));
        }
    }
    Ok(())
}

fn check_path(what: &str, bytes: &[u8]) -> Result<(), String> {
    if bytes.len() > MAX_PATH_BYTES {
        return Err(format!(
            "{what} is {} bytes long; Linux paths are at most {MAX_PATH_BYTES} bytes (PATH_MAX)",
            bytes.len()
        ));
    }
    if bytes.contains(&0) {
        return Err(format!("{what} contains a NUL byte"));
    }
    if let Some(long) = bytes
        .split(|b| *b == b'/')
        .find(|c| c.len() > MAX_NAME_BYTES)
    {
        return Err(format!(
            "{what} has a {}-byte component {:?}; Linux names are at most {MAX_NAME_BYTES} \
             bytes (NAME_MAX)",
            long.len(),
            shown_name(long)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_within_linux_limits_pass() {
        assert!(check_path("n", "a/b/c".as_bytes()).is_ok());
        assert!(check_path("n", "x".repeat(255).as_bytes()).is_ok());
        let err = check_path("n", "x".repeat(256).as_bytes()).unwrap_err();
        assert!(err.contains("256-byte component"), "{err}");
        let long = "abcdefg/".repeat(520);
        let err = check_path("n", long.as_bytes()).unwrap_err();
        assert!(err.contains("4160 bytes long"), "{err}");
        assert!(check_path("n", b"a\0b").is_err());
    }

    #[test]
    fn long_names_are_cut_for_messages() {
        let shown = shown_name("y".repeat(5000).as_bytes());
        assert!(
            shown.len() < 260 && shown.ends_with("(5000 bytes)"),
            "{shown}"
        );
    }
}
