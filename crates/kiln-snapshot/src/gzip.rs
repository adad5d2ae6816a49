//! A gzip writer for layers, fast on a small machine. Layers often hold data that is already
//! compressed (archives, media, random bytes), where deflate runs at a fraction of disk speed for
//! no gain. Input is cut into 1 MiB chunks and each chunk is deflated on its own, several at once
//! (one per core), then written in order. Each chunk is probed first: a 64 KiB sample is deflated
//! at level 1; when that saves under 5 % the chunk is written as stored deflate blocks, when it
//! saves under 25 % (mostly incompressible data with some tar headers: a tar of compressed or
//! random files) the chunk is "mixed": deflate never runs over its incompressible 512-byte
//! blocks, which are stored, and only the headers, paddings and other compressible stretches
//! between them are coded (see `mixed`), as small as deflate at level 1 for a fraction of the
//! time; otherwise it is compressed at level 6 (gzip's default). A chunk whose deflated form is not smaller than
//! its stored form is stored. The output is one plain gzip member that every reader accepts, and
//! the same input always gives the same bytes, whatever the number of cores (each chunk's bytes
//! depend only on the chunk).
//!
//! Chunks are concatenated as raw deflate: each compressed chunk comes from a fresh compressor
//! ended with a sync flush, which closes its last block (non-final) and byte-aligns the stream,
//! and nothing in it refers back before the chunk. Stored blocks start on that byte boundary. One
//! empty final stored block ends the stream. A batch of chunks is compressed in the background
//! while the caller fills the next one (reading a layer's files overlaps compressing them).

use std::io::{self, Write};
use std::sync::atomic::{AtomicUsize, Ordering};

use flate2::{Compress, Compression, Crc, FlushCompress, Status};
use kiln_types::{Digest, Sha256Writer};

const CHUNK: usize = 1 << 20;
const SAMPLE: usize = 64 << 10;
const DEFAULT_LEVEL: u32 = 6;
/// A sample whose level-1 output is above this fraction of its size is not worth compressing.
const STORE_ABOVE: f64 = 0.95;
/// A sample whose level-1 output is above this fraction is compressed at level 1 only.
const FAST_ABOVE: f64 = 0.75;
/// Chunks gathered before they are compressed together, per compressing thread: one keeps
/// every core busy (the caller fills the next batch meanwhile) and bounds memory: at most three
/// batches of buffers exist (the one being filled, the one being compressed, its output), about
/// 6 MiB on two cores, reused from batch to batch.
const CHUNKS_PER_THREAD: usize = 1;
/// Most compressing threads.
const MAX_THREADS: usize = 4;

pub(crate) struct AdaptiveGz<W: Write> {
    out: W,
    /// The running checksums of the stream, away in the batch being compressed meanwhile
    /// (`None` then): hashing 100 MB twice on the thread that reads the layer's files was a
    /// third of its time, so the batch's thread does it while the files are read.
    sums: Option<Sums>,
    /// Full chunks waiting to be compressed, and the partial one being filled (last).
    pending: Vec<Vec<u8>>,
    threads: usize,
    /// The batch being compressed in the background while the next one is filled, so that
    /// reading the layer's files overlaps compressing them. It gives back its input chunks and
    /// their encoded forms.
    inflight: Option<std::thread::JoinHandle<Batch>>,
    /// Emptied buffers, reused for the next chunks and outputs. Without them every batch
    /// allocates megabytes afresh on other threads, and the allocator's per-thread arenas keep
    /// what they freed: the process grew by twice the batches' size.
    spare: Vec<Vec<u8>>,
    /// Buffers allocated so far (each lives until the end): bounded by three batches.
    allocated: usize,
}

/// A batch's chunks and, once compressed, the deflate bytes of each.
struct Batch {
    chunks: Vec<Vec<u8>>,
    encoded: io::Result<Vec<Vec<u8>>>,
    sums: Sums,
}

/// The checksums kept over the whole stream, carried from batch to batch (batches are
/// compressed one after the other, so they see the bytes in order).
struct Sums {
    /// gzip's CRC-32 of the uncompressed bytes.
    crc: Crc,
    /// SHA-256 of the uncompressed bytes (a layer's diff id), when asked for.
    plain: Option<Sha256Writer>,
    /// SHA-256 and length of the gzip bytes written (a layer blob's digest), when asked for.
    gz: Option<Sha256Writer>,
}

/// What [`AdaptiveGz::finish_hashed`] returns besides the writer.
pub(crate) struct GzDigests {
    /// SHA-256 of the uncompressed stream.
    pub(crate) plain: Digest,
    /// SHA-256 of the gzip bytes.
    pub(crate) gz: Digest,
    /// Length of the gzip bytes.
    pub(crate) gz_len: u64,
}

/// How one chunk is written.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Mode {
    Store,
    /// Mostly incompressible with compressible stretches: see [`mixed`].
    Mixed,
    Level(u32),
}

impl<W: Write> AdaptiveGz<W> {
    pub(crate) fn new(out: W) -> io::Result<Self> {
        Self::with_sums(out, false)
    }

    /// [`AdaptiveGz::new`], also computing the SHA-256 of the uncompressed stream and of the
    /// gzip bytes (see [`AdaptiveGz::finish_hashed`]) off the writing thread.
    pub(crate) fn hashing(out: W) -> io::Result<Self> {
        Self::with_sums(out, true)
    }

    fn with_sums(mut out: W, hashing: bool) -> io::Result<Self> {
        // Fixed header (no name, mtime 0, OS unknown) so that output is reproducible.
        const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
        out.write_all(&HEADER)?;
        let mut sums = Sums {
            crc: Crc::new(),
            plain: hashing.then(Sha256Writer::default),
            gz: hashing.then(Sha256Writer::default),
        };
        if let Some(h) = sums.gz.as_mut() {
            h.update(&HEADER);
        }
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .clamp(1, MAX_THREADS);
        Ok(AdaptiveGz {
            out,
            sums: Some(sums),
            pending: Vec::new(),
            threads,
            inflight: None,
            spare: Vec::new(),
            allocated: 0,
        })
    }

    /// An empty buffer of a chunk's capacity, reused when there is one.
    fn buffer(&mut self) -> Vec<u8> {
        self.spare.pop().unwrap_or_else(|| {
            self.allocated += 1;
            Vec::with_capacity(CHUNK)
        })
    }

    /// Compresses and writes every pending chunk, the partial last one included.
    fn flush_batch(&mut self) -> io::Result<()> {
        let chunks = std::mem::take(&mut self.pending);
        let chunks: Vec<Vec<u8>> = chunks.into_iter().filter(|c| !c.is_empty()).collect();
        if chunks.is_empty() {
            return Ok(());
        }
        self.drain()?;
        let mut sums = self
            .sums
            .take()
            .ok_or_else(|| io::Error::other("an earlier gzip batch failed"))?;
        let outs: Vec<Vec<u8>> = (0..chunks.len()).map(|_| self.buffer()).collect();
        let threads = self.threads;
        let handle = std::thread::Builder::new()
            .name("kiln-gzip".into())
            .spawn(move || {
                // The uncompressed bytes are summed while the workers compress them; the
                // compressed ones once they exist, in order.
                let encoded = std::thread::scope(|s| {
                    let summing = s.spawn(|| {
                        for c in &chunks {
                            sums.crc.update(c);
                            if let Some(h) = sums.plain.as_mut() {
                                h.update(c);
                            }
                        }
                    });
                    let encoded = encode_all(&chunks, outs, threads);
                    summing
                        .join()
                        .map_err(|_| io::Error::other("a gzip summing thread failed"))?;
                    encoded
                });
                if let (Ok(encoded), Some(h)) = (&encoded, sums.gz.as_mut()) {
                    for e in encoded {
                        h.update(e);
                    }
                }
                Batch {
                    chunks,
                    encoded,
                    sums,
                }
            })?;
        self.inflight = Some(handle);
        Ok(())
    }

    /// Writes the output of the batch compressed in the background, once it is done.
    fn drain(&mut self) -> io::Result<()> {
        let Some(handle) = self.inflight.take() else {
            return Ok(());
        };
        let batch = handle
            .join()
            .map_err(|_| io::Error::other("a gzip thread failed"))?;
        self.sums = Some(batch.sums);
        let encoded = batch.encoded?;
        for e in &encoded {
            self.out.write_all(e)?;
        }
        for mut b in batch.chunks.into_iter().chain(encoded) {
            b.clear();
            self.spare.push(b);
        }
        Ok(())
    }

    /// Ends the stream (final empty block, CRC-32, size) and returns the writer.
    pub(crate) fn finish(self) -> io::Result<W> {
        Ok(self.finish_sums()?.0)
    }

    /// [`AdaptiveGz::finish`] of a writer made by [`AdaptiveGz::hashing`], with the digests of
    /// the uncompressed and gzip streams.
    pub(crate) fn finish_hashed(self) -> io::Result<(W, GzDigests)> {
        let (out, sums) = self.finish_sums()?;
        let (Some(plain), Some(gz)) = (sums.plain, sums.gz) else {
            return Err(io::Error::other(
                "gzip digests asked of a writer made without hashing",
            ));
        };
        let gz_len = gz.len();
        Ok((
            out,
            GzDigests {
                plain: plain.finish(),
                gz: gz.finish(),
                gz_len,
            },
        ))
    }

    fn finish_sums(mut self) -> io::Result<(W, Sums)> {
        self.flush_batch()?;
        self.drain()?;
        let mut sums = self
            .sums
            .take()
            .ok_or_else(|| io::Error::other("an earlier gzip batch failed"))?;
        // BFINAL=1, BTYPE=00 (stored), length 0: ends the deflate stream on a byte boundary;
        // then CRC-32 and size.
        let mut trailer = [1, 0, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0];
        trailer[5..9].copy_from_slice(&sums.crc.sum().to_le_bytes());
        trailer[9..].copy_from_slice(&sums.crc.amount().to_le_bytes());
        self.out.write_all(&trailer)?;
        if let Some(h) = sums.gz.as_mut() {
            h.update(&trailer);
        }
        Ok((self.out, sums))
    }
}

/// The deflate bytes of each chunk, in order, each written into one of `outs` (emptied
/// buffers), computed on up to `threads` threads.
fn encode_all(
    chunks: &[Vec<u8>],
    mut outs: Vec<Vec<u8>>,
    threads: usize,
) -> io::Result<Vec<Vec<u8>>> {
    let threads = threads.min(chunks.len()).max(1);
    if threads == 1 {
        for (c, o) in chunks.iter().zip(outs.iter_mut()) {
            encode(c, o)?;
        }
        return Ok(outs);
    }
    let next = AtomicUsize::new(0);
    // One slot per chunk, each taken by exactly one worker: the locks are never contended.
    let slots: Vec<std::sync::Mutex<Vec<u8>>> =
        outs.into_iter().map(std::sync::Mutex::new).collect();
    let results: Vec<io::Result<()>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| -> io::Result<()> {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let (Some(c), Some(slot)) = (chunks.get(i), slots.get(i)) else {
                            return Ok(());
                        };
                        let mut out = slot
                            .lock()
                            .map_err(|_| io::Error::other("a gzip worker thread failed"))?;
                        encode(c, &mut out)?;
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(io::Error::other("a gzip worker thread failed")))
            })
            .collect()
    });
    results.into_iter().collect::<io::Result<()>>()?;
    slots
        .into_iter()
        .map(|m| {
            m.into_inner()
                .map_err(|_| io::Error::other("a gzip worker thread failed"))
        })
        .collect()
}

fn mode(chunk: &[u8]) -> Mode {
    let sample = &chunk[..chunk.len().min(SAMPLE)];
    if sample.len() < 4096 {
        return Mode::Level(DEFAULT_LEVEL);
    }
    let mut probe = Compress::new(Compression::new(1), false);
    let mut out = Vec::with_capacity(sample.len() + 1024);
    match probe.compress_vec(sample, &mut out, FlushCompress::Finish) {
        Ok(Status::StreamEnd) => {
            let ratio = out.len() as f64 / sample.len() as f64;
            if ratio >= STORE_ABOVE {
                Mode::Store
            } else if ratio >= FAST_ABOVE {
                Mode::Mixed
            } else {
                Mode::Level(DEFAULT_LEVEL)
            }
        }
        // The output did not even fit in the input's size plus slack.
        _ => Mode::Store,
    }
}

/// One chunk as non-final deflate blocks ending on a byte boundary, written into `out`
/// (emptied first).
fn encode(chunk: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
    out.clear();
    // Room for the stored form and a little more, exactly: a `Vec` that grows doubles.
    let room = stored_len(CHUNK.max(chunk.len())) + 1024;
    out.reserve_exact(room);
    match mode(chunk) {
        Mode::Store => {}
        Mode::Mixed => mixed(chunk, out)?,
        Mode::Level(level) => deflate(chunk, level, out)?,
    }
    if out.is_empty() || out.len() >= stored_len(chunk.len()) {
        out.clear();
        stored(chunk, out);
    }
    // An output that outgrew its room before it was found not worth it gives the excess back:
    // the buffer is reused for every later chunk.
    out.shrink_to(room);
    Ok(())
}

fn stored_len(n: usize) -> usize {
    n + 5 * n.div_ceil(usize::from(u16::MAX))
}

/// `data` as stored (uncompressed) deflate blocks, non-final, appended to `out`.
fn stored(data: &[u8], out: &mut Vec<u8>) {
    Fixed::with(out, |f| f.stored(data));
}

/// `data` deflated by a fresh compressor and sync-flushed (non-final blocks, byte-aligned
/// end), appended to `out`.
fn deflate(data: &[u8], level: u32, out: &mut Vec<u8>) -> io::Result<()> {
    let mut comp = Compress::new(Compression::new(level), false);
    out.reserve(data.len() / 2 + 1024);
    let mut input = data;
    loop {
        if out.len() == out.capacity() {
            out.reserve(64 * 1024);
        }
        let before = comp.total_in();
        comp.compress_vec(input, out, FlushCompress::Sync)
            .map_err(io::Error::other)?;
        let consumed = usize::try_from(comp.total_in() - before).unwrap_or(input.len());
        input = &input[consumed.min(input.len())..];
        // The flush is complete when all input is taken and the output did not fill up.
        if input.is_empty() && out.len() < out.capacity() {
            return Ok(());
        }
    }
}

/// Blocks of this size are classified one by one in a mixed chunk (a tar's block size: a tar
/// cut at 1 MiB keeps its headers and paddings on these boundaries).
const BLOCK: usize = 512;
/// Compressible stretches at least this long go through zlib (a fresh compressor costs a
/// table reset, worth it only for long stretches); shorter ones get [`Fixed`] coding.
const ZLIB_FROM: usize = 16 << 10;

/// Whether a 512-byte block looks like random bytes: few zeros (a tar header, the padding
/// after a file and most binaries have many) and most byte values present (text has few).
fn looks_random(block: &[u8]) -> bool {
    // Random 512 bytes hold about 2 zeros and 221 distinct values; scaled for a short block.
    // The zeros are counted first (a vectorised pass); the distinct values are gathered into
    // four bitsets in turn (one per byte lane: no store waits on the previous one) and the
    // count is checked every 64 bytes, since it only grows: random bytes reach it in about
    // half the block. This was an eighth of a cold export's time; the answer is that of the
    // plain count (`looks_random_reference` in the tests), so the blob bytes do not change.
    let zeros = block.iter().filter(|&&b| b == 0).count();
    if zeros * BLOCK >= 16 * block.len() {
        return false;
    }
    let need = (160 * block.len()).div_ceil(BLOCK);
    let mut seen = [[0u64; 4]; 4];
    for group in block.chunks(64) {
        for quad in group.chunks(4) {
            for (lane, &b) in seen.iter_mut().zip(quad) {
                lane[usize::from(b >> 6)] |= 1 << (b & 63);
            }
        }
        let distinct: u32 = (0..4)
            .map(|w| (seen[0][w] | seen[1][w] | seen[2][w] | seen[3][w]).count_ones())
            .sum();
        if distinct as usize >= need {
            return true;
        }
    }
    false
}

/// A chunk of mostly incompressible data with compressible stretches (a tar of compressed or
/// random files: 512-byte headers and zero paddings between incompressible contents), coded
/// without running deflate over the incompressible part: each 512-byte block is classified
/// ([`looks_random`]), runs of random blocks become stored blocks (a copy), short
/// compressible runs get fixed-Huffman literals and run-length matches, long ones (text in
/// the middle of a mixed chunk) get zlib at level 6. Nothing refers back before the chunk,
/// and the output ends on a byte boundary, as [`encode`] requires.
fn mixed(chunk: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
    let kinds: Vec<bool> = chunk.chunks(BLOCK).map(looks_random).collect();
    Fixed::with(out, |out| {
        let mut start = 0;
        for same in kinds.chunk_by(|a, b| a == b) {
            let random = same[0];
            let end = chunk.len().min(start + same.len() * BLOCK);
            let run = &chunk[start..end];
            if random {
                out.stored(run);
            } else if run.len() >= ZLIB_FROM {
                out.align();
                deflate(run, DEFAULT_LEVEL, &mut out.bytes)?;
            } else {
                out.rle(run);
            }
            start = end;
        }
        out.align();
        Ok(())
    })
}

/// Deflate's length codes 257..=285: the shortest length each one codes, and its extra bits.
const LENGTH_BASE: [u16; 29] = [
    3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131,
    163, 195, 227, 258,
];
const LENGTH_EXTRA: [u8; 29] = [
    0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0,
];

/// A raw deflate bit stream written by hand: stored blocks and fixed-Huffman blocks (RFC 1951
/// 3.2.4 and 3.2.6), bits packed from the least significant.
struct Fixed {
    bytes: Vec<u8>,
    acc: u64,
    nbits: u32,
}

impl Fixed {
    /// Runs `f` with a bit writer appending to `out` (byte-aligned at its end), and gives the
    /// bytes back to `out`. `f` ends byte-aligned (`align`, or stored blocks only).
    fn with<T>(out: &mut Vec<u8>, f: impl FnOnce(&mut Fixed) -> T) -> T {
        let mut w = Fixed {
            bytes: std::mem::take(out),
            acc: 0,
            nbits: 0,
        };
        let result = f(&mut w);
        debug_assert_eq!(w.nbits, 0, "a deflate chunk must end on a byte boundary");
        *out = w.bytes;
        result
    }

    fn bits(&mut self, value: u32, n: u32) {
        self.acc |= u64::from(value) << self.nbits;
        self.nbits += n;
        while self.nbits >= 8 {
            self.bytes.push(self.acc as u8);
            self.acc >>= 8;
            self.nbits -= 8;
        }
    }

    /// A Huffman code: sent from its most significant bit.
    fn code(&mut self, code: u32, len: u32) {
        self.bits(code.reverse_bits() >> (32 - len), len);
    }

    /// The fixed code of literal/length symbol `sym`.
    fn symbol(&mut self, sym: u32) {
        match sym {
            0..=143 => self.code(0x30 + sym, 8),
            144..=255 => self.code(0x190 + sym - 144, 9),
            256..=279 => self.code(sym - 256, 7),
            _ => self.code(0xc0 + sym - 280, 8),
        }
    }

    /// Pads to the byte boundary (after a block's end or a stored block's header).
    fn pad(&mut self) {
        if self.nbits > 0 {
            self.bits(0, 8 - self.nbits);
        }
    }

    /// Ends on a byte boundary with an empty stored block, as a zlib sync flush does (nothing
    /// when already aligned).
    fn align(&mut self) {
        if self.nbits > 0 {
            self.stored(&[]);
        }
    }

    /// `data` as non-final stored blocks (one, empty, when `data` is).
    fn stored(&mut self, data: &[u8]) {
        if data.is_empty() {
            self.bits(0, 3);
            self.pad();
            self.bytes.extend_from_slice(&[0, 0, 0xff, 0xff]);
        }
        for block in data.chunks(usize::from(u16::MAX)) {
            let len = u16::try_from(block.len()).unwrap_or(u16::MAX);
            // BFINAL=0, BTYPE=00, then the byte boundary.
            self.bits(0, 3);
            self.pad();
            self.bytes.extend_from_slice(&len.to_le_bytes());
            self.bytes.extend_from_slice(&(!len).to_le_bytes());
            self.bytes.extend_from_slice(block);
        }
    }

    /// `data` as one fixed-Huffman block: literals, and runs of a repeated byte as matches at
    /// distance 1 (within `data` only).
    fn rle(&mut self, data: &[u8]) {
        // BFINAL=0, BTYPE=01.
        self.bits(0, 1);
        self.bits(1, 2);
        let mut i = 0;
        while i < data.len() {
            if i > 0 {
                let prev = data[i - 1];
                let run = data[i..]
                    .iter()
                    .take(258)
                    .take_while(|&&b| b == prev)
                    .count();
                if run >= 3 {
                    let code = LENGTH_BASE.partition_point(|&b| usize::from(b) <= run) - 1;
                    self.symbol(257 + code as u32);
                    let extra = u32::from(LENGTH_EXTRA[code]);
                    if extra > 0 {
                        self.bits((run - usize::from(LENGTH_BASE[code])) as u32, extra);
                    }
                    // Distance 1: code 0, five bits, no extra bits.
                    self.code(0, 5);
                    i += run;
                    continue;
                }
            }
            self.symbol(u32::from(data[i]));
            i += 1;
        }
        self.symbol(256);
    }
}

impl<W: Write> Write for AdaptiveGz<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.pending.last().is_none_or(|c| c.len() == CHUNK) {
            if self.pending.len() == self.threads * CHUNKS_PER_THREAD {
                self.flush_batch()?;
            }
            let buffer = self.buffer();
            self.pending.push(buffer);
        }
        let last = self
            .pending
            .last_mut()
            .expect("a chunk with room was just ensured");
        let n = buf.len().min(CHUNK - last.len());
        last.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn roundtrip(data: &[u8]) -> usize {
        let mut gz = AdaptiveGz::new(Vec::new()).unwrap();
        gz.write_all(data).unwrap();
        let out = gz.finish().unwrap();
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(out.as_slice())
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data);
        let mut again = AdaptiveGz::new(Vec::new()).unwrap();
        again.write_all(data).unwrap();
        assert_eq!(again.finish().unwrap(), out, "not reproducible");
        out.len()
    }

    #[test]
    fn mixed_data_round_trips_and_text_still_compresses() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let random: Vec<u8> = (0..3 * CHUNK + 123)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let text: Vec<u8> = b"kiln builds images. ".repeat(200_000);
        let mut mixed = text.clone();
        mixed.extend_from_slice(&random);
        mixed.extend_from_slice(&text);
        roundtrip(&[]);
        roundtrip(b"small");
        let random_size = roundtrip(&random);
        // Stored: a little framing over the input, never the 5 % that level 1 adds here.
        assert!(
            random_size < random.len() + random.len() / 100,
            "{random_size}"
        );
        let text_size = roundtrip(&text);
        assert!(text_size < text.len() / 50, "{text_size}");
        roundtrip(&mixed);
    }

    /// Random bytes cut by small compressible runs, as in a tar of many small random files
    /// (512-byte headers, zero padding).
    fn tar_like(len: usize) -> Vec<u8> {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            out.extend_from_slice(&[0u8; 700]);
            for _ in 0..4096 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                out.push(x as u8);
            }
        }
        out.truncate(len);
        out
    }

    fn gz_with(data: &[u8], threads: usize) -> Vec<u8> {
        let mut gz = AdaptiveGz::new(Vec::new()).unwrap();
        gz.threads = threads;
        gz.write_all(data).unwrap();
        gz.finish().unwrap()
    }

    #[test]
    fn chunks_compressed_in_parallel_give_the_same_bytes_as_one_thread() {
        let text: Vec<u8> = b"kiln builds images. ".repeat(300_000);
        let mut data = tar_like(MAX_THREADS * CHUNKS_PER_THREAD * CHUNK + 3 * CHUNK + 77);
        data.extend_from_slice(&text);
        let one = gz_with(&data, 1);
        for threads in [2, 3, MAX_THREADS] {
            assert_eq!(gz_with(&data, threads), one, "{threads} threads");
        }
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(one.as_slice())
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data);
        // Also what a plain multi-member-unaware reader sees: one member, nothing after it.
        let mut dec = flate2::read::GzDecoder::new(one.as_slice());
        std::io::copy(&mut dec, &mut std::io::sink()).unwrap();
        assert!(dec.into_inner().is_empty(), "bytes after the gzip member");
    }

    #[test]
    fn mostly_incompressible_chunks_take_the_fast_level_and_still_shrink() {
        let data = tar_like(2 * CHUNK);
        assert_eq!(mode(&data[..CHUNK]), Mode::Mixed);
        let size = roundtrip(&data);
        assert!(size < data.len() * 95 / 100, "{size} of {}", data.len());
        assert_eq!(
            mode(&b"kiln builds images. ".repeat(10_000)),
            Mode::Level(6)
        );
    }

    /// A layer tar of `n` files made by `content(i)`, as kiln writes them (GNU headers).
    fn layer_tar(n: usize, content: impl Fn(usize) -> Vec<u8>) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for i in 0..n {
            let data = content(i);
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            h.set_mtime(1_700_000_000 + i as u64);
            b.append_data(
                &mut h,
                format!("app/d{:03}/f{i:05}.dat", i % 200),
                &data[..],
            )
            .unwrap();
        }
        b.into_inner().unwrap()
    }

    /// Bytes of splitmix64 (no weak start for small seeds).
    fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
        let mix = |mut z: u64| {
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        // A start of its own per seed: sequences of nearby seeds do not overlap.
        let mut x = mix(seed ^ 0x5851_f42d_4c95_7f2d);
        (0..len.div_ceil(8))
            .flat_map(|_| {
                x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
                mix(x).to_le_bytes()
            })
            .take(len)
            .collect()
    }

    fn plain_gzip(data: &[u8], level: u32) -> usize {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), Compression::new(level));
        e.write_all(data).unwrap();
        e.finish().unwrap().len()
    }

    /// `gzip -t` accepts `gz` (the reader every other tool is measured against).
    fn gzip_accepts(gz: &[u8]) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("layer.tar.gz");
        std::fs::write(&path, gz).unwrap();
        let status = std::process::Command::new("gzip")
            .arg("-t")
            .arg(&path)
            .status()
            .expect("this test needs the `gzip` tool (package gzip)");
        assert!(status.success(), "gzip -t refused the layer");
    }

    #[test]
    fn a_tar_of_random_files_skips_deflate_and_stays_as_small_as_level_1() {
        // The bench's context: random files of 1 byte to 10 KB.
        let tar = layer_tar(450, |i| random_bytes(i as u64, (i * 7919) % 10_000 + 1));
        assert!(tar.len() > 2 * CHUNK, "{}", tar.len());
        assert_eq!(mode(&tar[CHUNK..2 * CHUNK]), Mode::Mixed);
        let size = roundtrip(&tar);
        // Headers and paddings are still compressed: as small as deflate at level 1 (what
        // these chunks got before), far below storing everything.
        let level1 = plain_gzip(&tar, 1);
        assert!(size <= level1 + level1 / 100, "{size} > {level1}");
        assert!(size < tar.len() * 94 / 100, "{size} of {}", tar.len());
        gzip_accepts(&gz_with(&tar, 2));
    }

    #[test]
    fn text_heavy_layers_compress_as_before() {
        let words = [
            "kiln ",
            "builds ",
            "layers ",
            "from ",
            "a ",
            "Dockerfile\n",
            "RUN ",
        ];
        let tar = layer_tar(250, |i| {
            (0..(i * 131) % 9000 + 10)
                .map(|j| words[(j * 7 + i) % words.len()])
                .collect::<String>()
                .into_bytes()
        });
        assert_eq!(mode(&tar[..CHUNK]), Mode::Level(DEFAULT_LEVEL));
        let size = roundtrip(&tar);
        let level6 = plain_gzip(&tar, 6);
        assert!(size <= level6 + level6 / 50, "{size} > {level6}");
        gzip_accepts(&gz_with(&tar, 2));
    }

    #[test]
    fn mixed_chunks_with_every_kind_of_stretch_round_trip() {
        // Random blocks, short compressible runs (runs of every length around deflate's
        // 258 limit), long text inside a mixed chunk (zlib), and a tail shorter than a block.
        let mut data = Vec::new();
        for i in 0..40 {
            data.extend_from_slice(&random_bytes(i, 3000 + 512 * (i as usize % 5)));
            data.extend(std::iter::repeat_n(b'x', 250 + i as usize));
            data.extend_from_slice(&[0u8; 700]);
            data.extend_from_slice(b"0000644\0ustar  \0");
        }
        data.extend_from_slice(&b"a line of text in the middle. ".repeat(1000));
        data.extend_from_slice(&random_bytes(99, 100_000));
        data.extend_from_slice(b"tail");
        let mut encoded = Vec::new();
        mixed(&data, &mut encoded).unwrap();
        assert!(encoded.len() < stored_len(data.len()));
        // As a whole stream: the final empty stored block after the non-final ones.
        let mut stream = encoded;
        stream.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
        let mut back = Vec::new();
        flate2::read::DeflateDecoder::new(stream.as_slice())
            .read_to_end(&mut back)
            .unwrap();
        assert!(
            back == data,
            "the mixed coding does not decode to its input"
        );
        roundtrip(&data);
    }

    /// `looks_random` as it was first written: one bitset, one pass.
    fn looks_random_reference(block: &[u8]) -> bool {
        let mut seen = [0u64; 4];
        let mut zeros = 0usize;
        for &b in block {
            seen[usize::from(b >> 6)] |= 1 << (b & 63);
            zeros += usize::from(b == 0);
        }
        let distinct: u32 = seen.iter().map(|w| w.count_ones()).sum();
        zeros * BLOCK < 16 * block.len() && distinct as usize * BLOCK >= 160 * block.len()
    }

    #[test]
    fn the_fast_random_test_answers_as_the_plain_count() {
        // Blocks around both thresholds: n distinct values (the rest repeats of one), z zeros,
        // at every length a chunk's last block can have, and random and tar-like blocks.
        let mut checked = 0;
        for len in [1, 2, 3, 31, 63, 64, 65, 100, 255, 256, 257, 400, 511, 512] {
            for distinct in (1..=256usize)
                .step_by(3)
                .chain([159, 160, 161, 220, 255, 256])
            {
                for zeros in [0usize, 1, 2, 15, 16, 17, 40] {
                    let mut block: Vec<u8> = (0..len)
                        .map(|i| if i < distinct { (i % 255) as u8 + 1 } else { 7 })
                        .collect();
                    for b in block.iter_mut().rev().take(zeros) {
                        *b = 0;
                    }
                    assert_eq!(
                        looks_random(&block),
                        looks_random_reference(&block),
                        "len {len}, distinct {distinct}, zeros {zeros}"
                    );
                    // The same bytes in another order.
                    block.reverse();
                    assert_eq!(looks_random(&block), looks_random_reference(&block));
                    checked += 2;
                }
            }
        }
        let mut data = random_bytes(3, 1 << 20);
        data.extend(tar_like(1 << 20));
        for block in data.chunks(BLOCK).chain(data[100..].chunks(BLOCK)) {
            assert_eq!(looks_random(block), looks_random_reference(block));
            checked += 1;
        }
        assert!(checked > 10_000);
    }

    #[test]
    fn the_background_digests_are_those_of_the_plain_and_gzip_bytes() {
        // Several batches (mixed, text and a partial last chunk), on one thread and on several:
        // the digests summed off the writing thread match the bytes, and the gzip bytes are
        // those of the writer that does not hash.
        let mut data = layer_tar(9, |i| random_bytes(i as u64, CHUNK / 3));
        data.extend(tar_like(CHUNK * 2 + 777));
        for threads in [1, 2, MAX_THREADS] {
            let mut gz = AdaptiveGz::hashing(Vec::new()).unwrap();
            gz.threads = threads;
            // Odd-sized writes, as the tar builder makes them.
            for piece in data.chunks(100_003) {
                gz.write_all(piece).unwrap();
            }
            let (out, d) = gz.finish_hashed().unwrap();
            assert_eq!(out, gz_with(&data, threads), "{threads} threads");
            assert_eq!(d.plain, Digest::of(&data), "{threads} threads");
            assert_eq!(d.gz, Digest::of(&out), "{threads} threads");
            assert_eq!(d.gz_len, out.len() as u64, "{threads} threads");
            gzip_accepts(&out);
        }
        // A writer made without hashing says so instead of returning wrong digests.
        let gz = AdaptiveGz::new(Vec::new()).unwrap();
        assert!(gz.finish_hashed().is_err());
    }

    #[test]
    fn a_large_layer_is_compressed_in_a_bounded_number_of_buffers() {
        // 40 chunks of mixed content through 2 threads: the buffers are those of three
        // batches (filling, compressing, their outputs), reused, whatever the layer's size.
        let mut gz = AdaptiveGz::new(std::io::sink()).unwrap();
        gz.threads = 2;
        let piece = tar_like(CHUNK / 2 + 1000);
        for _ in 0..80 {
            gz.write_all(&piece).unwrap();
        }
        let batch = 2 * CHUNKS_PER_THREAD;
        assert!(gz.allocated <= 3 * batch, "{} buffers", gz.allocated);
        assert!(
            gz.spare
                .iter()
                .all(|b| b.capacity() <= stored_len(CHUNK) + 1024),
            "a buffer grew"
        );
        gz.finish().unwrap();
    }

    #[test]
    fn a_layer_has_the_same_digest_on_every_machine_and_run() {
        // Pinned: the digest of a layer is what a registry or a cache on another machine
        // knows it by. A change here changes the digest of every layer kiln exports.
        let mut data = layer_tar(300, |i| random_bytes(i as u64 + 7, (i * 104_729) % 9000));
        data.extend_from_slice(&b"kiln builds images. ".repeat(20_000));
        data.extend_from_slice(&random_bytes(3, CHUNK + 5000));
        let one = gz_with(&data, 1);
        assert_eq!(gz_with(&data, 2), one);
        assert_eq!(gz_with(&data, 4), one);
        assert_eq!(
            kiln_types::Digest::of(&one).to_string(),
            "sha256:fc6b494b1310babd13ccfe815993c7f1fdbd0cddd683ffdad471fb724b8e2c8c"
        );
    }
}
