//! MindSpore's rule for tensors the destination does not lay out.

use crate::TensorLayout;
use crate::formats::mindspore::strategy::StrategyFile;
use crate::{Strategy, TensorInfo};

use super::{ReshardError, Side};

/// A tensor that the destination strategy does not lay out. MindSpore copies
/// it unchanged to every destination rank: rank `k` receives the slice of
/// the source rank with the same position inside its stage, stage-local
/// rank `(k mod dst_stage_devices) mod src_stage_devices` of the first
/// source stage holding the tensor. The copy is not planned: its bytes are
/// one source tensor's, whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyThrough {
    /// The tensor, with its global shape.
    pub tensor: TensorInfo,
    /// Per destination rank, the source rank whose slice it receives.
    pub from: Vec<u64>,
}

/// The source rank whose slice destination rank `k` receives under the
/// copy-through rule, or `None` when no source stage holds the tensor.
fn copy_source(
    k: u64,
    dst_stage_devices: u64,
    src_stage_devices: u64,
    src: &TensorLayout,
) -> Option<u64> {
    let position = (k % dst_stage_devices.max(1)) % src_stage_devices.max(1);
    let stages = src.mesh().rank_count() / src_stage_devices.max(1);
    (0..stages)
        .map(|s| s * src_stage_devices + position)
        .find(|&g| src.holds(g))
}

/// The destination strategy with MindSpore's rules for parameters missing
/// from one side: with no source layout, a parameter is copied through
/// whole (replicated); with no destination layout, it is left out of the
/// strategy and copied as [`CopyThrough`] says.
pub(super) fn copy_through(
    src: &Strategy,
    src_file: Option<&StrategyFile>,
    dst_file: &StrategyFile,
    tensors: &[TensorInfo],
    warnings: &mut Vec<String>,
) -> Result<(Strategy, Vec<CopyThrough>), ReshardError> {
    let in_dst: std::collections::BTreeSet<&str> =
        dst_file.params.iter().map(|p| p.name.as_str()).collect();
    let in_src: std::collections::BTreeSet<&str> = src_file
        .map(|f| f.params.iter().map(|p| p.name.as_str()).collect())
        .unwrap_or_default();
    let (copied, laid_out): (Vec<TensorInfo>, Vec<TensorInfo>) = tensors
        .iter()
        .cloned()
        .partition(|t| in_src.contains(t.name.as_str()) && !in_dst.contains(t.name.as_str()));
    let mut dst = dst_file
        .to_strategy("destination", &laid_out)
        .map_err(Side::Destination.layouts_error())?;
    let mut layouts = dst.layouts().to_vec();
    let mut changed = false;
    for (i, t) in laid_out.iter().enumerate() {
        if src_file.is_some()
            && !in_src.contains(t.name.as_str())
            && in_dst.contains(t.name.as_str())
        {
            warnings.push(format!(
                "tensor `{}` has no source layout: copied through whole, as MindSpore does",
                t.name
            ));
            layouts[i] = TensorLayout::replicated(dst.mesh().clone(), &t.shape)
                .map_err(|source| ReshardError::CheckpointLayout { source, help: "" })?;
            changed = true;
        }
    }
    if changed {
        dst = Strategy::new("destination", dst.mesh().clone(), laid_out, layouts)
            .map_err(|source| ReshardError::CheckpointStrategy { source, help: "" })?;
    }
    let m = dst.mesh().rank_count();
    let dst_stage = dst_file
        .stage_devices()
        .map_err(Side::Destination.layouts_error())?;
    let src_stage = match src_file {
        Some(f) => f.stage_devices().map_err(Side::Source.layouts_error())?,
        None => src.mesh().rank_count(),
    };
    let mut copies = Vec::with_capacity(copied.len());
    for t in copied {
        let l = src.layout(&t.name).expect("a source tensor");
        let from = (0..m)
            .map(|k| copy_source(k, dst_stage, src_stage, l))
            .collect::<Option<Vec<u64>>>()
            .ok_or_else(|| ReshardError::NoCopySource {
                tensor: t.name.clone(),
            })?;
        warnings.push(format!(
            "tensor `{}` has no destination layout: destination rank k receives the slice of source stage-local rank (k mod {dst_stage}) mod {src_stage}, unchanged, as MindSpore does",
            t.name
        ));
        copies.push(CopyThrough { tensor: t, from });
    }
    Ok((dst, copies))
}
