//! Writing a destination rank's files, resumably.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use crate::formats::checkpoint::{CheckpointFormat, CheckpointWriter, Checksum, Frame};
use crate::{DType, TensorInfo};

use super::error::{internal, io};
use super::read::{PieceRuns, SourceFiles, fill_range, write_tensor};
use super::{DcpPlan, Located, OutputFormat, Prepared, ReshardError, WriteConfig};

/// What one destination rank's run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RankOutcome {
    /// Destination rank.
    pub rank: u64,
    /// Its main file (see [`Prepared::output_path`]).
    pub path: PathBuf,
    /// Every data file written (or found complete).
    pub files: Vec<PathBuf>,
    /// Bytes of the file.
    pub bytes: u64,
    /// True when a previous run had already completed it.
    pub resumed: bool,
}

fn file_checksum(path: &Path) -> std::io::Result<(u64, String)> {
    use std::io::Read;
    let mut f = File::open(path)?;
    let mut sum = Checksum::default();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        sum.update(&buf[..n]);
    }
    Ok((sum.len(), sum.hex()))
}

/// What a rank's run wrote: each file with its size and checksum, so a
/// later run can tell the files complete.
#[derive(serde::Serialize, serde::Deserialize)]
struct Manifest {
    files: Vec<ManifestEntry>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ManifestEntry {
    file: String,
    bytes: u64,
    checksum: String,
}

/// One file a destination rank writes: its path, which of the rank's
/// slices it holds (indices into [`Prepared::rank_slices`], in file
/// order), and how they are framed.
struct OutFile {
    path: PathBuf,
    slices: Vec<usize>,
    framing: OutFraming,
}

enum OutFraming {
    /// A ckpt or safetensors checkpoint of the slices.
    Checkpoint(CheckpointFormat),
    /// A Hugging Face shard: its header, then the data.
    Shard(Vec<u8>),
    /// A DCP file: one `torch.save` archive around each slice.
    Archives(Vec<crate::formats::torch::dcp_write::TorchSaveItem>),
}

/// Everything a destination rank writes.
struct RankOutput {
    /// The folder its files are in.
    dir: PathBuf,
    /// Its manifest.
    manifest: PathBuf,
    files: Vec<OutFile>,
    /// Small files written whole after the data files (an index, DCP's
    /// `.metadata`): every process writing a rank writes the same bytes.
    extras: Vec<(PathBuf, Vec<u8>)>,
}

impl Prepared {
    /// The tensors copied through to destination rank `rank`, with the
    /// source tensor each is copied from.
    fn copied_to(&self, rank: u64) -> Vec<(&TensorInfo, &Located)> {
        self.copies
            .iter()
            .filter_map(|c| {
                let from = *c.from.get(usize::try_from(rank).ok()?)?;
                Some((&c.tensor, self.sources.get(&from)?.get(&c.tensor.name)?))
            })
            .collect()
    }

    /// Bytes of tensor data destination rank `rank` receives: its slices
    /// under the destination strategy and the tensors copied through (0 for
    /// a rank outside the destination).
    pub fn rank_bytes(&self, rank: u64) -> u64 {
        self.rank_slices(rank)
            .map_or(0, |slices| slices.iter().map(|s| s.bytes).sum())
    }

    /// The format outputs are written in under `cfg`.
    pub fn output_format(&self, cfg: &WriteConfig) -> OutputFormat {
        cfg.format.unwrap_or(self.source_format)
    }

    /// The main output file of destination rank `rank`: its checkpoint, its
    /// first Hugging Face shard, or its DCP file.
    ///
    /// # Errors
    ///
    /// As [`Prepared::write_rank`] before it writes anything.
    pub fn output_path(&self, cfg: &WriteConfig, rank: u64) -> Result<PathBuf, ReshardError> {
        let out = self.rank_output(cfg, rank)?;
        Ok(out
            .files
            .first()
            .map_or_else(|| out.dir.clone(), |f| f.path.clone()))
    }

    /// The files destination rank `rank` writes under `cfg`.
    fn rank_output(&self, cfg: &WriteConfig, rank: u64) -> Result<RankOutput, ReshardError> {
        let slices = self.rank_slices(rank)?;
        let all: Vec<usize> = (0..slices.len()).collect();
        match self.output_format(cfg) {
            f @ (OutputFormat::Ckpt | OutputFormat::Safetensors) => {
                let format = match f {
                    OutputFormat::Ckpt => CheckpointFormat::Ckpt,
                    _ => CheckpointFormat::Safetensors,
                };
                let dir = cfg.out_dir.join(format!("rank_{rank}"));
                Ok(RankOutput {
                    manifest: dir.join("MANIFEST.json"),
                    files: vec![OutFile {
                        path: dir.join(format!("checkpoint_{rank}.{}", format.extension())),
                        slices: all,
                        framing: OutFraming::Checkpoint(format),
                    }],
                    extras: Vec::new(),
                    dir,
                })
            }
            OutputFormat::HuggingFace => self.hf_output(cfg, rank, &slices),
            OutputFormat::Dcp => self.dcp_output(cfg, rank, &slices),
        }
    }

    /// A Hugging Face model folder of the rank's slices.
    fn hf_output(
        &self,
        cfg: &WriteConfig,
        rank: u64,
        slices: &[RankSlice],
    ) -> Result<RankOutput, ReshardError> {
        use crate::formats::hf::HfLayout;
        let dir = if self.dst.mesh().rank_count() == 1 {
            cfg.out_dir.clone()
        } else {
            cfg.out_dir.join(format!("rank_{rank}"))
        };
        let infos: Vec<TensorInfo> = slices
            .iter()
            .map(|s| TensorInfo {
                name: s.name.clone(),
                shape: s.shape.clone(),
                dtype: s.dtype,
            })
            .collect();
        let layout = HfLayout::new(&infos, cfg.max_shard_bytes)?;
        let index: BTreeMap<&str, usize> = slices
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.as_str(), i))
            .collect();
        let files = layout
            .shards()
            .iter()
            .map(|sh| OutFile {
                path: dir.join(sh.file_name()),
                slices: sh
                    .tensors()
                    .iter()
                    .map(|t| index[t.name.as_str()])
                    .collect(),
                framing: OutFraming::Shard(sh.header().to_vec()),
            })
            .collect();
        let extras = if layout.is_sharded() {
            vec![(
                dir.join(crate::formats::hf::INDEX_NAME),
                layout.index_json().into_bytes(),
            )]
        } else {
            Vec::new()
        };
        Ok(RankOutput {
            manifest: dir.join(format!(".shardplan-rank_{rank}.json")),
            files,
            extras,
            dir,
        })
    }

    /// The rank's file of a DCP folder and the folder's `.metadata`.
    fn dcp_output(
        &self,
        cfg: &WriteConfig,
        rank: u64,
        slices: &[RankSlice],
    ) -> Result<RankOutput, ReshardError> {
        use crate::formats::torch::dcp_write::METADATA_FILE;
        let (layout, slice_of) = self.dcp_plan()?;
        let file = layout
            .files()
            .get(rank as usize)
            .ok_or_else(|| internal(format!("no DCP file for rank {rank}")))?;
        debug_assert!(slices.len() >= file.items.len());
        Ok(RankOutput {
            manifest: cfg.out_dir.join(format!(".shardplan-rank_{rank}.json")),
            files: vec![OutFile {
                path: cfg.out_dir.join(&file.name),
                slices: file
                    .items
                    .iter()
                    .map(|it| slice_of[it.source.0][it.source.1])
                    .collect(),
                framing: OutFraming::Archives(
                    file.items.iter().map(|it| it.archive.clone()).collect(),
                ),
            }],
            extras: vec![(
                cfg.out_dir.join(METADATA_FILE),
                layout.metadata_bytes().to_vec(),
            )],
            dir: cfg.out_dir.clone(),
        })
    }

    /// The DCP folder of the destination and, per rank, which of its
    /// slices each of its chunks is; planned on first use.
    fn dcp_plan(&self) -> Result<&DcpPlan, ReshardError> {
        if let Some(p) = self.dcp.get() {
            return Ok(p);
        }
        let ranks = self.dst.mesh().rank_count();
        let mut chunks = Vec::with_capacity(ranks as usize);
        let mut slice_of: Vec<Vec<usize>> = Vec::with_capacity(ranks as usize);
        for r in 0..ranks {
            let (c, k) = self.dcp_chunks(r)?;
            chunks.push(c);
            slice_of.push(k);
        }
        let layout = crate::formats::torch::dcp_write::DcpLayout::new(chunks)?;
        Ok(self.dcp.get_or_init(|| (layout, slice_of)))
    }

    /// The DCP chunks of rank `r`, one per slice it receives (empty slices
    /// left out, unless the whole tensor is empty), with the index of the
    /// slice each is.
    fn dcp_chunks(
        &self,
        r: u64,
    ) -> Result<
        (
            Vec<crate::formats::torch::dcp_write::DcpChunkOut>,
            Vec<usize>,
        ),
        ReshardError,
    > {
        use crate::formats::torch::dcp_write::DcpChunkOut;
        let mut chunks = Vec::new();
        let mut index = Vec::new();
        let mut k = 0usize;
        for (t, l) in self.dst.tensors().iter().zip(self.dst.layouts()) {
            let Some(region) = l.region_of(r) else {
                continue;
            };
            let whole_empty = t.shape.contains(&0);
            // An empty tensor is recorded once, by the first rank holding it.
            let first = (0..r).all(|q| l.region_of(q).is_none());
            if !region.is_empty() || (whole_empty && first) {
                chunks.push(DcpChunkOut {
                    fqn: t.name.clone(),
                    dtype: t.dtype,
                    shape: t.shape.clone(),
                    offsets: region.offset().to_vec(),
                    sizes: region.extent().to_vec(),
                });
                index.push(k);
            }
            k += 1;
        }
        for (t, loc) in self.copied_to(r) {
            chunks.push(DcpChunkOut {
                fqn: t.name.clone(),
                dtype: t.dtype,
                shape: t.shape.clone(),
                offsets: vec![0; loc.entry.shape.len()],
                sizes: loc.entry.shape.clone(),
            });
            index.push(k);
            k += 1;
        }
        Ok((chunks, index))
    }

    /// Writes destination rank `rank`'s files under `cfg.out_dir`, or finds
    /// them complete from an earlier run. `progress` receives the bytes of
    /// each tensor written.
    ///
    /// # Errors
    ///
    /// [`ReshardError::OutputOverlaps`] when the output folder overlaps the
    /// sources (which are never written); [`ReshardError::Io`] naming the
    /// file; temporary files are removed.
    pub fn write_rank(
        &self,
        cfg: &WriteConfig,
        rank: u64,
        progress: &mut dyn FnMut(u64),
    ) -> Result<RankOutcome, ReshardError> {
        if let Some(src) = self
            .src_dirs
            .iter()
            .find(|d| paths_overlap(d, &cfg.out_dir))
        {
            return Err(ReshardError::OutputOverlaps {
                out: cfg.out_dir.display().to_string(),
                src: src.display().to_string(),
            });
        }
        let out = self.rank_output(cfg, rank)?;
        std::fs::create_dir_all(&out.dir).map_err(io(&out.dir))?;
        let paths: Vec<PathBuf> = out.files.iter().map(|f| f.path.clone()).collect();
        if let Some(bytes) = vouched(&out.manifest, &paths) {
            write_extras(&out.extras)?;
            return Ok(RankOutcome {
                rank,
                path: paths.first().cloned().unwrap_or_else(|| out.dir.clone()),
                files: paths,
                bytes,
                resumed: true,
            });
        }
        remove_leftovers(&out.dir, &paths);
        let mut entries = Vec::with_capacity(out.files.len());
        let mut files = SourceFiles::default();
        let runs = self.rank_runs(rank, &mut files)?;
        for f in &out.files {
            let name = f.path.file_name().expect("file").to_string_lossy();
            let tmp = out.dir.join(format!(".{name}.tmp-{}", std::process::id()));
            let sum = match self.write_file(&tmp, f, &runs, &files, cfg, progress) {
                Ok(sum) => sum,
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(e);
                }
            };
            std::fs::rename(&tmp, &f.path).map_err(io(&f.path))?;
            entries.push(ManifestEntry {
                file: name.into_owned(),
                bytes: sum.len(),
                checksum: sum.hex(),
            });
        }
        write_extras(&out.extras)?;
        let bytes = entries.iter().map(|e| e.bytes).sum();
        let manifest = Manifest { files: entries };
        crate::formats::write_atomic(
            &out.manifest,
            serde_json::to_string_pretty(&manifest)
                .expect("serializes")
                .as_bytes(),
        )
        .map_err(io(&out.manifest))?;
        Ok(RankOutcome {
            rank,
            path: paths.first().cloned().unwrap_or_else(|| out.dir.clone()),
            files: paths,
            bytes,
            resumed: false,
        })
    }

    /// Writes one output file to `tmp`, summed on the way out (the file is
    /// not read again).
    fn write_file(
        &self,
        tmp: &Path,
        f: &OutFile,
        runs: &[(RankSlice, Vec<PieceRuns>)],
        files: &SourceFiles,
        cfg: &WriteConfig,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Checksum, ReshardError> {
        let decl: Vec<(String, DType, Vec<u64>)> = f
            .slices
            .iter()
            .map(|&i| {
                let s = &runs[i].0;
                (s.name.clone(), s.dtype, s.shape.clone())
            })
            .collect();
        let window = usize::try_from(cfg.window_bytes).unwrap_or(usize::MAX);
        let out = &f.path;
        let mut writer = match &f.framing {
            OutFraming::Checkpoint(format) => {
                CheckpointWriter::create_streamed(tmp, *format, decl, window, cfg.direct_io)
            }
            OutFraming::Shard(header) => {
                let frames = (0..decl.len())
                    .map(|i| Frame {
                        prefix: if i == 0 { header.clone() } else { Vec::new() },
                        suffix: None,
                    })
                    .collect();
                CheckpointWriter::create_framed(tmp, decl, frames, window, cfg.direct_io)
            }
            OutFraming::Archives(items) => {
                let frames = items
                    .iter()
                    .map(|item| {
                        let item = item.clone();
                        Frame {
                            prefix: item.prefix().to_vec(),
                            suffix: Some(Box::new(move |crc| item.suffix(crc))),
                        }
                    })
                    .collect();
                CheckpointWriter::create_framed(tmp, decl, frames, window, cfg.direct_io)
            }
        }
        .map_err(io(out))?;
        if matches!(&f.framing, OutFraming::Shard(_)) && f.slices.is_empty() {
            // A shard of no tensors is only its header.
            return Err(internal(format!("empty shard {}", out.display())));
        }
        for &i in &f.slices {
            let (slice, pieces) = &runs[i];
            write_tensor(&mut writer, files, pieces, out)?;
            progress(slice.bytes);
        }
        let (_, sum) = writer.finish_summed().map_err(io(out))?;
        Ok(sum)
    }

    /// The tensors destination rank `rank` receives, in the order its
    /// checkpoint lists them: its slices under the destination strategy
    /// (strategy order), then the tensors copied through.
    ///
    /// # Errors
    ///
    /// [`ReshardError::NoSuchRank`] for a rank outside the destination.
    pub fn rank_slices(&self, rank: u64) -> Result<Vec<RankSlice>, ReshardError> {
        self.check_rank(rank)?;
        let planned = self
            .dst
            .tensors()
            .iter()
            .zip(self.dst.layouts())
            .filter_map(|(t, l)| Some(RankSlice::new(t, l.region_of(rank)?.extent().to_vec())));
        let copied = self
            .copied_to(rank)
            .into_iter()
            .map(|(t, loc)| RankSlice::new(t, loc.entry.shape.clone()));
        Ok(planned.chain(copied).collect())
    }

    /// Reads destination rank `rank`'s tensors into memory, without writing
    /// a file: `bufs[i]` receives the bytes of [`Prepared::rank_slices`]'s
    /// `i`-th tensor, row-major. Only the bytes the rank's pieces cover are
    /// read, with positional reads, from the source files they name.
    ///
    /// # Errors
    ///
    /// [`ReshardError::NoSuchRank`] for a rank outside the destination;
    /// [`ReshardError::BufferCount`] or [`ReshardError::BufferSize`] for
    /// buffers that do not match the slices in number or size;
    /// [`ReshardError::Io`] naming the source file of a failed read.
    pub fn read_rank_into(&self, rank: u64, bufs: &mut [&mut [u8]]) -> Result<(), ReshardError> {
        let mut files = SourceFiles::default();
        let slices = self.rank_runs(rank, &mut files)?;
        if slices.len() != bufs.len() {
            return Err(ReshardError::BufferCount {
                rank,
                slices: slices.len(),
                buffers: bufs.len(),
            });
        }
        for ((slice, pieces), buf) in slices.iter().zip(bufs.iter_mut()) {
            if buf.len() as u64 != slice.bytes {
                return Err(ReshardError::BufferSize {
                    tensor: slice.name.clone(),
                    rank,
                    bytes: slice.bytes,
                    len: buf.len(),
                });
            }
            fill_range(&files.0, pieces, 0, buf).map_err(|(path, e)| io(path)(e))?;
        }
        Ok(())
    }

    fn check_rank(&self, rank: u64) -> Result<(), ReshardError> {
        let ranks = self.dst.mesh().rank_count();
        if rank >= ranks {
            return Err(ReshardError::NoSuchRank { rank, ranks });
        }
        Ok(())
    }

    /// Each tensor of [`Prepared::rank_slices`] with the byte runs that
    /// fill it, its source files opened in `files`.
    fn rank_runs(
        &self,
        rank: u64,
        files: &mut SourceFiles,
    ) -> Result<Vec<(RankSlice, Vec<PieceRuns>)>, ReshardError> {
        self.check_rank(rank)?;
        let mut out = Vec::new();
        for (t, l) in self.dst.tensors().iter().zip(self.dst.layouts()) {
            let Some(region) = l.region_of(rank) else {
                continue;
            };
            let tp = self
                .plan
                .tensors
                .iter()
                .find(|p| p.name == t.name)
                .ok_or_else(|| internal(format!("tensor `{}` is not in the plan", t.name)))?;
            let size = t.dtype.size_bytes();
            let mut pieces: Vec<PieceRuns> = Vec::new();
            for p in tp.pieces.iter().filter(|p| p.dst_rank == rank) {
                let loc = &self.sources[&p.src_rank][&t.name];
                pieces.push(PieceRuns::new(
                    files.open(&loc.path)?,
                    loc.entry.offset,
                    size,
                    &loc.entry.shape,
                    p.src_box.offset(),
                    region.extent(),
                    &p.dst_local_offset,
                    p.dst_box.extent(),
                ));
            }
            let slice = RankSlice::new(t, region.extent().to_vec());
            // The verified plan covers the slice exactly once: the runs add
            // up to it (windows and buffers are reused, so a gap would
            // leave old bytes).
            debug_assert_eq!(
                pieces.iter().map(PieceRuns::bytes).sum::<u64>(),
                slice.bytes
            );
            out.push((slice, pieces));
        }
        for (t, loc) in self.copied_to(rank) {
            // The whole source tensor, as it is.
            let shape = &loc.entry.shape;
            let zeros = vec![0; shape.len()];
            let piece = PieceRuns::new(
                files.open(&loc.path)?,
                loc.entry.offset,
                t.dtype.size_bytes(),
                shape,
                &zeros,
                shape,
                &zeros,
                shape,
            );
            out.push((RankSlice::new(t, shape.clone()), vec![piece]));
        }
        Ok(out)
    }
}

/// One tensor a destination rank receives: its name, dtype, the shape of
/// its slice and the slice's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RankSlice {
    /// Tensor name.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Shape of the rank's slice.
    pub shape: Vec<u64>,
    /// Bytes of the slice.
    pub bytes: u64,
}

impl RankSlice {
    fn new(t: &TensorInfo, shape: Vec<u64>) -> Self {
        // Slices of tensors whose sizes the strategy checked: no overflow.
        let bytes = shape
            .iter()
            .product::<u64>()
            .saturating_mul(t.dtype.size_bytes());
        RankSlice {
            name: t.name.clone(),
            dtype: t.dtype,
            shape,
            bytes,
        }
    }
}

/// The bytes of `paths` when `manifest` vouches for every one of them
/// (size and checksum): an earlier run completed them.
fn vouched(manifest: &Path, paths: &[PathBuf]) -> Option<u64> {
    let text = std::fs::read_to_string(manifest).ok()?;
    let m: Manifest = serde_json::from_str(&text).ok()?;
    if m.files.len() != paths.len() {
        return None;
    }
    let mut total = 0u64;
    for (e, p) in m.files.iter().zip(paths) {
        if p.file_name()?.to_string_lossy() != e.file || !p.is_file() {
            return None;
        }
        let (bytes, sum) = file_checksum(p).ok()?;
        if bytes != e.bytes || sum != e.checksum {
            return None;
        }
        total += bytes;
    }
    Some(total)
}

/// Removes what an interrupted run of these files left under a temporary
/// name; other ranks' files in a shared folder are left alone.
fn remove_leftovers(dir: &Path, paths: &[PathBuf]) {
    let prefixes: Vec<String> = paths
        .iter()
        .filter_map(|p| p.file_name())
        .map(|n| format!(".{}.tmp-", n.to_string_lossy()))
        .collect();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if prefixes.iter().any(|p| name.starts_with(p.as_str())) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Writes each small file whole, atomically.
fn write_extras(extras: &[(PathBuf, Vec<u8>)]) -> Result<(), ReshardError> {
    for (path, bytes) in extras {
        crate::formats::write_atomic(path, bytes).map_err(io(path))?;
    }
    Ok(())
}

/// True when one of the two folders is inside the other, after resolving
/// both (symbolic links, `.` and `..`; the part of a path that does not
/// exist yet is taken as written, less its `.` and `..`): an output there
/// could replace a source.
pub fn paths_overlap(src: &Path, out: &Path) -> bool {
    // Both readings: `..` after a symbolic link means its target's parent
    // to the system but the link's parent lexically; either may be meant.
    let inside = |a: &Path, b: &Path| a.starts_with(b) || b.starts_with(a);
    inside(&resolved(src), &resolved(out)) || inside(&lexical(src), &lexical(out))
}

/// `path` made absolute, with `.` and `..` taken out as written.
fn lexical(path: &Path) -> PathBuf {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// `path` made absolute with its deepest existing ancestor canonicalized.
fn resolved(path: &Path) -> PathBuf {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut existing = abs.as_path();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            // A `..` or the root: resolve lexically from here.
            _ => break,
        }
    }
    let mut out = std::fs::canonicalize(existing).unwrap_or_else(|_| lexical(existing));
    for part in rest.into_iter().rev() {
        match part.to_str() {
            Some(".") => {}
            Some("..") => {
                out.pop();
            }
            _ => out.push(part),
        }
    }
    out
}
