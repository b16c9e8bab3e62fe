//! The rank folders of a MindSpore checkpoint directory (`rank_<r>/`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::formats::tensor_index::{CheckpointError, CheckpointFault, CheckpointFormat, bad};

/// Checkpoint files by rank, from a directory of `rank_<r>/` folders, each
/// holding one or more checkpoint files (several in MindSpore's by-stage
/// output, `..._part<s>.ckpt`).
///
/// # Errors
///
/// [`CheckpointError`] for a missing directory, a folder that is not
/// `rank_<number>`, duplicate ranks, missing ranks (a gap in 0..n), or a
/// rank folder without checkpoint files.
pub fn rank_files(dir: &Path) -> Result<BTreeMap<u64, Vec<PathBuf>>, CheckpointError> {
    let entries = std::fs::read_dir(dir).map_err(|e| bad(dir, CheckpointFault::RankDir(e)))?;
    let mut out: BTreeMap<u64, Vec<PathBuf>> = BTreeMap::new();
    for e in entries {
        let e = e.map_err(|e| bad(dir, CheckpointFault::List(e)))?;
        let path = e.path();
        let fname = e.file_name().to_string_lossy().into_owned();
        if !path.is_dir() {
            continue;
        }
        let Some(rank) = fname
            .strip_prefix("rank_")
            .and_then(|r| r.parse::<u64>().ok())
        else {
            continue;
        };
        if fname != format!("rank_{rank}") {
            return Err(bad(
                &path,
                CheckpointFault::RankName {
                    folder: fname,
                    rank,
                },
            ));
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(&path)
            .map_err(|e| bad(&path, CheckpointFault::List(e)))?
            .filter_map(|f| f.ok().map(|f| f.path()))
            .filter(|p| CheckpointFormat::of_path(p).is_some())
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(bad(&path, CheckpointFault::EmptyRank));
        }
        if out.insert(rank, files).is_some() {
            return Err(bad(dir, CheckpointFault::RankTwice { rank }));
        }
    }
    if out.is_empty() {
        return Err(bad(dir, CheckpointFault::NoRanks));
    }
    if let Some((i, r)) = out.keys().enumerate().find(|(i, r)| **r != *i as u64) {
        return Err(bad(
            dir,
            CheckpointFault::RankGap {
                after: i.saturating_sub(1) as u64,
                next: *r,
            },
        ));
    }
    Ok(out)
}
