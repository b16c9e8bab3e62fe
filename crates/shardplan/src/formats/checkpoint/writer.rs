//! Writing a checkpoint file one tensor at a time.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use super::{CheckpointFormat, Checksum};
use crate::DType;
use crate::formats::io::checksum::Summed;
use crate::formats::io::stream::StreamFile;
use crate::formats::mindspore::ckpt;
use crate::formats::safetensors;

/// Streams tensors into a new checkpoint file. The header (safetensors) or
/// each record's framing (ckpt) is written from the declared tensors, so
/// data can be added one tensor at a time.
pub struct CheckpointWriter {
    out: Out,
    format: CheckpointFormat,
    pending: Vec<(String, DType, Vec<u64>)>,
    next: usize,
    /// For a framed file, the bytes around each tensor.
    frames: Option<Vec<Frame>>,
    /// The checksum of the current tensor's data, when its suffix needs it.
    crc: Option<crc32fast::Hasher>,
}

/// The bytes a framed file puts around one tensor's data: a Hugging Face
/// shard's header before its first tensor, a `torch.save` archive's
/// records around each tensor of a DCP file.
pub struct Frame {
    /// Bytes before the data.
    pub prefix: Vec<u8>,
    /// Bytes after the data, computed from the CRC-32 of the data (zip
    /// records carry it); `None` writes nothing.
    #[allow(clippy::type_complexity)]
    pub suffix: Option<Box<dyn Fn(u32) -> Vec<u8> + Send + Sync>>,
}

impl CheckpointWriter {
    /// Starts writing `tensors` (name, dtype, shape), in that order, to the
    /// open file `file`.
    ///
    /// # Errors
    ///
    /// IO errors.
    pub fn new(
        file: File,
        format: CheckpointFormat,
        tensors: Vec<(String, DType, Vec<u64>)>,
    ) -> std::io::Result<Self> {
        let out = Out::Buffered(Summed {
            inner: BufWriter::with_capacity(1 << 20, file),
            sum: Checksum::default(),
        });
        Self::start(out, format, tensors)
    }

    /// Creates `path` and starts writing `tensors` to it through a
    /// `StreamFile` (`formats/io/stream.rs`): windows of `window` bytes filled in place
    /// ([`CheckpointWriter::write_tensor_with`]) and written by background
    /// threads, with direct IO when `direct` is asked and the file system
    /// supports it.
    ///
    /// # Errors
    ///
    /// IO errors.
    pub fn create_streamed(
        path: &Path,
        format: CheckpointFormat,
        tensors: Vec<(String, DType, Vec<u64>)>,
        window: usize,
        direct: bool,
    ) -> std::io::Result<Self> {
        let out = Out::Stream(StreamFile::create(path, window, direct)?);
        Self::start(out, format, tensors)
    }

    /// Creates `path` as [`CheckpointWriter::create_streamed`] does, for a
    /// file whose framing the caller computed: each tensor's data is
    /// written between its frame's prefix and suffix, nothing else.
    ///
    /// # Errors
    ///
    /// IO errors; `InvalidInput` when there is not one frame per tensor.
    pub fn create_framed(
        path: &Path,
        tensors: Vec<(String, DType, Vec<u64>)>,
        frames: Vec<Frame>,
        window: usize,
        direct: bool,
    ) -> std::io::Result<Self> {
        if frames.len() != tensors.len() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "one frame per tensor is needed",
            ));
        }
        Ok(CheckpointWriter {
            out: Out::Stream(StreamFile::create(path, window, direct)?),
            format: CheckpointFormat::Safetensors,
            pending: tensors,
            next: 0,
            frames: Some(frames),
            crc: None,
        })
    }

    /// True when the output bypasses the page cache (direct IO).
    pub fn is_direct(&self) -> bool {
        matches!(&self.out, Out::Stream(s) if s.is_direct())
    }

    fn start(
        mut out: Out,
        format: CheckpointFormat,
        tensors: Vec<(String, DType, Vec<u64>)>,
    ) -> std::io::Result<Self> {
        if format == CheckpointFormat::Safetensors {
            out.write_all(&safetensors::write::header(&tensors, "ms"))?;
        }
        Ok(CheckpointWriter {
            out,
            format,
            pending: tensors,
            next: 0,
            frames: None,
            crc: None,
        })
    }

    /// Appends the data of the next declared tensor.
    ///
    /// # Errors
    ///
    /// IO errors; `InvalidInput` when the data's length does not match the
    /// declared tensor or all tensors are written.
    pub fn write_tensor(&mut self, data: &[u8]) -> std::io::Result<()> {
        let want = self.next_len()?;
        if data.len() as u64 != want {
            let name = &self.pending[self.next].0;
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("tensor `{name}`: {} bytes, declared {want}", data.len()),
            ));
        }
        self.framing(want)?;
        self.out.write_all(data)?;
        if let Some(h) = &mut self.crc {
            h.update(data);
        }
        self.close_frame()
    }

    /// Appends the data of the next declared tensor, filled in place:
    /// `fill(offset, bytes)` must fill `bytes` with the tensor's data from
    /// byte `offset` on. It is called for consecutive ranges covering the
    /// tensor, each at most a window long.
    ///
    /// # Errors
    ///
    /// IO errors, `fill`'s errors, and `InvalidInput` when all tensors are
    /// written.
    pub fn write_tensor_with(
        &mut self,
        mut fill: impl FnMut(u64, &mut [u8]) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let len = self.next_len()?;
        self.framing(len)?;
        let mut at = 0u64;
        match &mut self.out {
            Out::Stream(s) => {
                while at < len {
                    let space = s.space();
                    let k = (space.len() as u64).min(len - at) as usize;
                    fill(at, &mut space[..k])?;
                    if let Some(h) = &mut self.crc {
                        h.update(&space[..k]);
                    }
                    s.commit(k)?;
                    at += k as u64;
                }
            }
            Out::Buffered(w) => {
                let mut buf = vec![0u8; (len.min(1 << 20)) as usize];
                while at < len {
                    let k = (buf.len() as u64).min(len - at) as usize;
                    fill(at, &mut buf[..k])?;
                    if let Some(h) = &mut self.crc {
                        h.update(&buf[..k]);
                    }
                    w.write_all(&buf[..k])?;
                    at += k as u64;
                }
            }
        }
        self.close_frame()
    }

    /// Ends the current tensor: its frame's suffix, then on to the next.
    fn close_frame(&mut self) -> std::io::Result<()> {
        let crc = self.crc.take().map(crc32fast::Hasher::finalize);
        if let Some(frame) = self.frames.as_ref().and_then(|f| f.get(self.next))
            && let Some(suffix) = &frame.suffix
        {
            let bytes = suffix(crc.unwrap_or(0));
            self.out.write_all(&bytes)?;
        }
        self.next += 1;
        Ok(())
    }

    /// Bytes of the next declared tensor.
    fn next_len(&self) -> std::io::Result<u64> {
        let (_, dtype, shape) = self.pending.get(self.next).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "more tensors than declared",
            )
        })?;
        Ok(shape.iter().product::<u64>() * dtype.size_bytes())
    }

    /// Writes what precedes the next tensor's `len` data bytes: nothing in
    /// safetensors (the header declared it), the record framing in ckpt.
    fn framing(&mut self, len: u64) -> std::io::Result<()> {
        if let Some(frame) = self.frames.as_ref().and_then(|f| f.get(self.next)) {
            self.crc = frame.suffix.as_ref().map(|_| crc32fast::Hasher::new());
            let prefix = frame.prefix.clone();
            return self.out.write_all(&prefix);
        }
        let (name, dtype, shape) = &self.pending[self.next];
        match self.format {
            CheckpointFormat::Safetensors => {}
            CheckpointFormat::Ckpt => {
                let framing = ckpt::record_framing(name, *dtype, shape, len);
                self.out.write_all(&framing)?;
            }
        }
        Ok(())
    }

    /// Flushes and fsyncs; returns the file.
    ///
    /// # Errors
    ///
    /// IO errors; `InvalidInput` when declared tensors are missing.
    pub fn finish(self) -> std::io::Result<File> {
        self.finish_summed().map(|(f, _)| f)
    }

    /// As [`CheckpointWriter::finish`], also returning the checksum of every
    /// byte written, computed on the way out (no second read of the file).
    ///
    /// # Errors
    ///
    /// As [`CheckpointWriter::finish`].
    pub fn finish_summed(self) -> std::io::Result<(File, Checksum)> {
        if self.next != self.pending.len() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "fewer tensors than declared",
            ));
        }
        match self.out {
            Out::Buffered(w) => {
                let sum = w.sum;
                let file = w.inner.into_inner().map_err(|e| e.into_error())?;
                file.sync_all()?;
                Ok((file, sum))
            }
            Out::Stream(s) => s.finish().map(|(file, _, sum)| (file, sum)),
        }
    }
}

/// Where a [`CheckpointWriter`]'s bytes go.
enum Out {
    Buffered(Summed<BufWriter<File>>),
    Stream(StreamFile),
}

impl Out {
    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Out::Buffered(w) => w.write_all(bytes),
            Out::Stream(s) => s.put(bytes),
        }
    }
}
