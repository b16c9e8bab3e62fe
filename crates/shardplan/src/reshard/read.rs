//! Reading a destination rank's pieces from the source files.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::BoxRuns;
use crate::formats::checkpoint::CheckpointWriter;
use crate::formats::io::pread::ReadBatch;

use super::ReshardError;
use super::error::io;

/// The source files one destination rank reads, each opened once.
#[derive(Default)]
pub(super) struct SourceFiles(pub(super) Vec<(PathBuf, File)>);

impl SourceFiles {
    /// The index of `path`, opening it on first use.
    pub(super) fn open(&mut self, path: &Path) -> Result<usize, ReshardError> {
        if let Some(i) = self.0.iter().position(|(p, _)| p == path) {
            return Ok(i);
        }
        let f = File::open(path).map_err(io(path))?;
        self.0.push((path.to_path_buf(), f));
        Ok(self.0.len() - 1)
    }
}

/// Streams one output tensor from `pieces`. A failed read names its source
/// file, a failed write the output `out`.
pub(super) fn write_tensor(
    writer: &mut CheckpointWriter,
    files: &SourceFiles,
    pieces: &[PieceRuns],
    out: &Path,
) -> Result<(), ReshardError> {
    let mut read_error = None;
    let written = writer.write_tensor_with(|at, dst| {
        fill_range(&files.0, pieces, at, dst).map_err(|(path, e)| {
            let kind = e.kind();
            read_error = Some(io(path)(e));
            std::io::Error::new(kind, "reading a source failed")
        })
    });
    match written {
        Ok(()) => Ok(()),
        Err(e) => Err(read_error.unwrap_or_else(|| io(out)(e))),
    }
}

/// The byte runs of one piece: its box's runs in bytes ([`BoxRuns`]),
/// from `base` in one source file to the destination slice.
#[derive(Debug)]
pub(super) struct PieceRuns {
    file: usize,
    base: u64,
    runs: BoxRuns,
}

impl PieceRuns {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        file: usize,
        base: u64,
        size: u64,
        src_shape: &[u64],
        src_off: &[u64],
        dst_shape: &[u64],
        dst_off: &[u64],
        extent: &[u64],
    ) -> Self {
        PieceRuns {
            file,
            base,
            runs: BoxRuns::new(src_shape, src_off, dst_shape, dst_off, extent, size),
        }
    }

    /// The bytes the piece fills.
    pub(super) fn bytes(&self) -> u64 {
        self.runs.count() * self.runs.run()
    }
}

/// Fills `out`, bytes `at..at + out.len()` of a destination slice, from
/// the pieces' runs: each piece's runs that overlap the range, clipped,
/// read with one vectored positional read per stretch of contiguous
/// source bytes (a piece of whole source rows scattering into strided
/// destination rows is one read per 1024 rows), straight into `out`.
///
/// # Errors
///
/// The source file and the error of a failed read.
pub(super) fn fill_range<'a>(
    files: &'a [(PathBuf, File)],
    pieces: &[PieceRuns],
    at: u64,
    out: &mut [u8],
) -> Result<(), (&'a Path, std::io::Error)> {
    let end = at + out.len() as u64;
    for p in pieces {
        let (path, f) = &files[p.file];
        let mut batch = ReadBatch::new(f);
        // `out` is carved front to back; `rest` starts at `rest_at`.
        let mut rest: &mut [u8] = &mut *out;
        let mut rest_at = at;
        let run = p.runs.run();
        for r in p.runs.first_after(at)..p.runs.count() {
            let (src, dst) = p.runs.at(r);
            let src = p.base + src;
            if dst >= end {
                break;
            }
            let a = dst.max(at);
            let b = (dst + run).min(end);
            let (_, tail) = std::mem::take(&mut rest).split_at_mut((a - rest_at) as usize);
            let (piece, tail) = tail.split_at_mut((b - a) as usize);
            rest = tail;
            rest_at = b;
            batch
                .push(src + (a - dst), piece)
                .map_err(|e| (path.as_path(), e))?;
        }
        batch.flush().map_err(|e| (path.as_path(), e))?;
    }
    Ok(())
}
