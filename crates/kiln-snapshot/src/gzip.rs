//! A gzip writer that stores incompressible data instead of compressing it. Layers often hold
//! data that is already compressed (archives, media, random bytes), where deflate runs at a
//! fraction of disk speed for no gain. Each 1 MiB chunk is probed: a 64 KiB sample is deflated
//! at level 1 and, when that saves under 5 %, the chunk is written as stored deflate blocks;
//! otherwise it is compressed at level 6 (gzip's default). The output is one plain gzip member
//! that every reader accepts, and the same input always gives the same bytes.
//!
//! Stored blocks are written by hand between compressed ones. That is sound because the
//! compressor is fully flushed first: a full flush byte-aligns the stream and clears the
//! compressor's history, so nothing it emits later refers back across the stored bytes it never
//! saw.

use std::io::{self, Write};

use flate2::{Compress, Compression, Crc, FlushCompress, Status};

const CHUNK: usize = 1 << 20;
const SAMPLE: usize = 64 << 10;
const DEFAULT_LEVEL: u32 = 6;
/// A sample whose level-1 output is above this fraction of its size is not worth compressing.
const STORE_ABOVE: f64 = 0.95;

pub(crate) struct AdaptiveGz<W: Write> {
    out: W,
    comp: Compress,
    /// The compressor emitted data since its last full flush.
    dirty: bool,
    crc: Crc,
    pending: Vec<u8>,
    scratch: Vec<u8>,
}

impl<W: Write> AdaptiveGz<W> {
    pub(crate) fn new(mut out: W) -> io::Result<Self> {
        // Fixed header (no name, mtime 0, OS unknown) so that output is reproducible.
        out.write_all(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff])?;
        Ok(AdaptiveGz {
            out,
            comp: Compress::new(Compression::new(DEFAULT_LEVEL), false),
            dirty: false,
            crc: Crc::new(),
            pending: Vec::with_capacity(CHUNK),
            scratch: Vec::with_capacity(CHUNK + 64 * 1024),
        })
    }

    fn incompressible(chunk: &[u8]) -> bool {
        let sample = &chunk[..chunk.len().min(SAMPLE)];
        if sample.len() < 4096 {
            return false;
        }
        let mut probe = Compress::new(Compression::new(1), false);
        let mut out = Vec::with_capacity(sample.len() + 1024);
        match probe.compress_vec(sample, &mut out, FlushCompress::Finish) {
            Ok(Status::StreamEnd) => out.len() as f64 >= sample.len() as f64 * STORE_ABOVE,
            // The output did not even fit in the input's size plus slack.
            _ => true,
        }
    }

    /// Writes `data` as stored (uncompressed) deflate blocks, non-final.
    fn store(&mut self, data: &[u8]) -> io::Result<()> {
        if self.dirty {
            self.deflate(&[], FlushCompress::Full)?;
            self.dirty = false;
        }
        for block in data.chunks(usize::from(u16::MAX)) {
            let len = u16::try_from(block.len()).unwrap_or(u16::MAX);
            // BFINAL=0, BTYPE=00, padded to the byte boundary the flush left us on.
            self.out.write_all(&[0])?;
            self.out.write_all(&len.to_le_bytes())?;
            self.out.write_all(&(!len).to_le_bytes())?;
            self.out.write_all(block)?;
        }
        Ok(())
    }

    fn deflate(&mut self, mut input: &[u8], flush: FlushCompress) -> io::Result<()> {
        loop {
            self.scratch.clear();
            let before = self.comp.total_in();
            let status = self
                .comp
                .compress_vec(input, &mut self.scratch, flush)
                .map_err(io::Error::other)?;
            let consumed = usize::try_from(self.comp.total_in() - before).unwrap_or(input.len());
            input = &input[consumed.min(input.len())..];
            self.out.write_all(&self.scratch)?;
            let full = self.scratch.len() == self.scratch.capacity();
            let done = match flush {
                FlushCompress::Finish => status == Status::StreamEnd,
                _ => input.is_empty() && !full,
            };
            if done {
                return Ok(());
            }
        }
    }

    fn flush_chunk(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::take(&mut self.pending);
        self.crc.update(&chunk);
        if Self::incompressible(&chunk) {
            self.store(&chunk)?;
        } else {
            self.deflate(&chunk, FlushCompress::None)?;
            self.dirty = true;
        }
        self.pending = chunk;
        self.pending.clear();
        Ok(())
    }

    /// Ends the stream (deflate end, CRC-32, size) and returns the writer.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        self.flush_chunk()?;
        self.deflate(&[], FlushCompress::Finish)?;
        let crc = self.crc.sum();
        let size = self.crc.amount();
        self.out.write_all(&crc.to_le_bytes())?;
        self.out.write_all(&size.to_le_bytes())?;
        Ok(self.out)
    }
}

impl<W: Write> Write for AdaptiveGz<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = CHUNK - self.pending.len();
        let n = buf.len().min(room);
        self.pending.extend_from_slice(&buf[..n]);
        if self.pending.len() == CHUNK {
            self.flush_chunk()?;
        }
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
}
