//! A gzip writer for layers, fast on a small machine. Layers often hold data that is already
//! compressed (archives, media, random bytes), where deflate runs at a fraction of disk speed for
//! no gain. Input is cut into 1 MiB chunks and each chunk is deflated on its own, several at once
//! (one per core), then written in order. Each chunk is probed first: a 64 KiB sample is deflated
//! at level 1; when that saves under 5 % the chunk is written as stored deflate blocks, when it
//! saves under 25 % (mostly incompressible data with some tar headers) the chunk is compressed at
//! level 1, where level 6 would cost several times the time for about the same size; otherwise
//! it is compressed at level 6 (gzip's default). A chunk whose deflated form is not smaller than
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

const CHUNK: usize = 1 << 20;
const SAMPLE: usize = 64 << 10;
const DEFAULT_LEVEL: u32 = 6;
/// A sample whose level-1 output is above this fraction of its size is not worth compressing.
const STORE_ABOVE: f64 = 0.95;
/// A sample whose level-1 output is above this fraction is compressed at level 1 only.
const FAST_ABOVE: f64 = 0.75;
/// Chunks gathered before they are compressed together: enough to keep every core busy while
/// bounding memory (input and output of one batch).
const BATCH: usize = 8;

pub(crate) struct AdaptiveGz<W: Write> {
    out: W,
    crc: Crc,
    /// Full chunks waiting to be compressed, and the partial one being filled (last).
    pending: Vec<Vec<u8>>,
    threads: usize,
    /// The batch being compressed in the background while the next one is filled, so that
    /// reading the layer's files overlaps compressing them.
    inflight: Option<std::thread::JoinHandle<io::Result<Vec<Vec<u8>>>>>,
}

/// How one chunk is written.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Mode {
    Store,
    Level(u32),
}

impl<W: Write> AdaptiveGz<W> {
    pub(crate) fn new(mut out: W) -> io::Result<Self> {
        // Fixed header (no name, mtime 0, OS unknown) so that output is reproducible.
        out.write_all(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff])?;
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .clamp(1, BATCH);
        Ok(AdaptiveGz {
            out,
            crc: Crc::new(),
            pending: Vec::new(),
            threads,
            inflight: None,
        })
    }

    /// Compresses and writes every pending chunk, the partial last one included.
    fn flush_batch(&mut self) -> io::Result<()> {
        let chunks = std::mem::take(&mut self.pending);
        let chunks: Vec<Vec<u8>> = chunks.into_iter().filter(|c| !c.is_empty()).collect();
        if chunks.is_empty() {
            return Ok(());
        }
        for c in &chunks {
            self.crc.update(c);
        }
        self.drain()?;
        let threads = self.threads;
        let handle = std::thread::Builder::new()
            .name("kiln-gzip".into())
            .spawn(move || encode_all(&chunks, threads))?;
        self.inflight = Some(handle);
        Ok(())
    }

    /// Writes the output of the batch compressed in the background, once it is done.
    fn drain(&mut self) -> io::Result<()> {
        let Some(handle) = self.inflight.take() else {
            return Ok(());
        };
        let encoded = handle
            .join()
            .map_err(|_| io::Error::other("a gzip thread failed"))??;
        for e in &encoded {
            self.out.write_all(e)?;
        }
        Ok(())
    }

    /// Ends the stream (final empty block, CRC-32, size) and returns the writer.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        self.flush_batch()?;
        self.drain()?;
        // BFINAL=1, BTYPE=00 (stored), length 0: ends the deflate stream on a byte boundary.
        self.out.write_all(&[1, 0, 0, 0xff, 0xff])?;
        let crc = self.crc.sum();
        let size = self.crc.amount();
        self.out.write_all(&crc.to_le_bytes())?;
        self.out.write_all(&size.to_le_bytes())?;
        Ok(self.out)
    }
}

/// The deflate bytes of each chunk, in order, computed on up to `threads` threads.
fn encode_all(chunks: &[Vec<u8>], threads: usize) -> io::Result<Vec<Vec<u8>>> {
    let threads = threads.min(chunks.len()).max(1);
    if threads == 1 {
        return chunks.iter().map(|c| encode(c)).collect();
    }
    let next = AtomicUsize::new(0);
    let mut results: Vec<Option<io::Result<Vec<u8>>>> = (0..chunks.len()).map(|_| None).collect();
    let done: Vec<Vec<(usize, io::Result<Vec<u8>>)>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(c) = chunks.get(i) else {
                            return mine;
                        };
                        mine.push((i, encode(c)));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_default())
            .collect()
    });
    for (i, r) in done.into_iter().flatten() {
        results[i] = Some(r);
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(io::Error::other("a gzip worker thread failed"))))
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
                Mode::Level(1)
            } else {
                Mode::Level(DEFAULT_LEVEL)
            }
        }
        // The output did not even fit in the input's size plus slack.
        _ => Mode::Store,
    }
}

/// One chunk as non-final deflate blocks ending on a byte boundary.
fn encode(chunk: &[u8]) -> io::Result<Vec<u8>> {
    if let Mode::Level(level) = mode(chunk) {
        let deflated = deflate(chunk, level)?;
        if deflated.len() < stored_len(chunk.len()) {
            return Ok(deflated);
        }
    }
    Ok(stored(chunk))
}

fn stored_len(n: usize) -> usize {
    n + 5 * n.div_ceil(usize::from(u16::MAX))
}

/// `data` as stored (uncompressed) deflate blocks, non-final.
fn stored(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(stored_len(data.len()));
    for block in data.chunks(usize::from(u16::MAX)) {
        let len = u16::try_from(block.len()).unwrap_or(u16::MAX);
        // BFINAL=0, BTYPE=00, on the byte boundary the previous chunk ended on.
        out.push(0);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(block);
    }
    out
}

/// `data` deflated by a fresh compressor and sync-flushed: non-final blocks, byte-aligned end.
fn deflate(data: &[u8], level: u32) -> io::Result<Vec<u8>> {
    let mut comp = Compress::new(Compression::new(level), false);
    let mut out = Vec::with_capacity(data.len() / 2 + 1024);
    let mut input = data;
    loop {
        if out.len() == out.capacity() {
            out.reserve(64 * 1024);
        }
        let before = comp.total_in();
        comp.compress_vec(input, &mut out, FlushCompress::Sync)
            .map_err(io::Error::other)?;
        let consumed = usize::try_from(comp.total_in() - before).unwrap_or(input.len());
        input = &input[consumed.min(input.len())..];
        // The flush is complete when all input is taken and the output did not fill up.
        if input.is_empty() && out.len() < out.capacity() {
            return Ok(out);
        }
    }
}

impl<W: Write> Write for AdaptiveGz<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.pending.last().is_none_or(|c| c.len() == CHUNK) {
            if self.pending.len() == BATCH {
                self.flush_batch()?;
            }
            self.pending.push(Vec::with_capacity(CHUNK));
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
        let mut data = tar_like(BATCH * CHUNK + 3 * CHUNK + 77);
        data.extend_from_slice(&text);
        let one = gz_with(&data, 1);
        for threads in [2, 3, BATCH] {
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
        assert_eq!(mode(&data[..CHUNK]), Mode::Level(1));
        let size = roundtrip(&data);
        assert!(size < data.len() * 95 / 100, "{size} of {}", data.len());
        assert_eq!(
            mode(&b"kiln builds images. ".repeat(10_000)),
            Mode::Level(6)
        );
    }
}
