//! What a derivation reports: the rule behind each part of a tensor's
//! layout ([`DeriveNote`]), per-tensor reasons, and the [`Derived`] result.

use std::fmt;

use super::{AxisRole, DeriveError, DeriveTarget, Fallback};
use crate::layout::SplitPolicy;
use crate::strategy::Strategy;

/// One rule that decided part of a tensor's derived layout.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeriveNote {
    /// Not split over tensor-parallel axes in training: not split.
    NotSplit,
    /// Replicated because a `derive.replicate` glob matches.
    ForcedReplicate,
    /// A tensor-parallel split kept on its dimension, rescaled.
    TpKept {
        /// Dimension.
        dim: usize,
        /// Ways in training.
        from: u64,
        /// Ways in the target.
        to: u64,
        /// Block policy of the target split.
        policy: SplitPolicy,
    },
    /// A tensor-parallel split merged: the target has no tensor parallelism.
    TpMerged {
        /// Dimension.
        dim: usize,
        /// Ways in training.
        from: u64,
    },
    /// A tensor-parallel split dropped because another dimension keeps the
    /// target's split.
    TpDropped {
        /// Dimension.
        dim: usize,
        /// Ways in training.
        from: u64,
        /// The dimension that keeps the split.
        kept: usize,
    },
    /// The target's degree does not divide the dimension: the fallback.
    Fallback {
        /// Dimension.
        dim: usize,
        /// Its size.
        size: u64,
        /// The target's tensor-parallel degree.
        tp: u64,
        /// What was done.
        fallback: Fallback,
    },
    /// The optimizer shard (the innermost data-parallel split of
    /// dimension 0) dropped.
    OptimizerShardDropped {
        /// Axes of the shard, outermost first.
        axes: Vec<String>,
        /// Ways.
        ways: u64,
    },
    /// A data-parallel (FSDP-style) split dropped.
    DataSplitDropped {
        /// Dimension.
        dim: usize,
        /// Axes, outermost first.
        axes: Vec<String>,
        /// Ways.
        ways: u64,
    },
    /// Partial sums over these axes, reduced by the transfer.
    PartialReduced {
        /// Axes.
        axes: Vec<String>,
    },
    /// A pin on a non-pipeline axis dropped.
    PinDropped {
        /// Axis.
        axis: String,
        /// Coordinate.
        coord: u64,
    },
    /// Placed on the stage holding its layer.
    StageByLayer {
        /// Layer index.
        layer: u64,
        /// Target stage.
        stage: u64,
        /// Target stage count.
        stages: u64,
        /// First layer of the stage.
        first: u64,
        /// Last layer of the stage.
        last: u64,
    },
    /// Training stages without a layer index, mapped by relative position
    /// (several for a tensor on several stages, such as a tied embedding).
    StageMapped {
        /// Training stages, ascending.
        from: Vec<u64>,
        /// Training stage count.
        from_count: u64,
        /// Target stages, ascending.
        to: Vec<u64>,
        /// Target stage count.
        to_count: u64,
    },
    /// Training stages merged: the target has one stage.
    StagesMerged {
        /// Training stages, ascending.
        from: Vec<u64>,
        /// Training stage count.
        from_count: u64,
    },
    /// A shared tensor (`derive.shared`) without layers: on every target
    /// stage.
    Shared {
        /// Target stage count.
        stages: u64,
    },
    /// A shared tensor (`derive.shared`) used by the given layers: on the
    /// stages holding them.
    SharedByLayers {
        /// Layer indices, ascending.
        layers: Vec<u64>,
        /// Target stages, ascending.
        to: Vec<u64>,
        /// Target stage count.
        stages: u64,
    },
    /// On every training stage and without a layer index: on every target
    /// stage.
    EveryStage {
        /// Target stage count.
        stages: u64,
    },
}

impl fmt::Display for DeriveNote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let axes = |a: &[String]| a.join(", ");
        match self {
            DeriveNote::NotSplit => write!(f, "no tensor-parallel split in training: not split"),
            DeriveNote::ForcedReplicate => write!(f, "replicated (derive.replicate)"),
            DeriveNote::TpKept {
                dim,
                from,
                to,
                policy,
            } => {
                let p = match policy {
                    SplitPolicy::Even => "",
                    SplitPolicy::Chunk => "chunk ",
                    SplitPolicy::Balanced => "balanced ",
                    SplitPolicy::Blocks(_) => "blocks ",
                };
                write!(f, "{p}tp split of dim {dim} kept: {from} -> {to}")
            }
            DeriveNote::TpMerged { dim, from } => {
                write!(
                    f,
                    "tp split of dim {dim} ({from} ways) merged: no tp in the target"
                )
            }
            DeriveNote::TpDropped { dim, from, kept } => write!(
                f,
                "tp split of dim {dim} ({from} ways) dropped: dim {kept} keeps the split"
            ),
            DeriveNote::Fallback {
                dim,
                size,
                tp,
                fallback,
            } => match fallback {
                Fallback::Replicate => write!(
                    f,
                    "dim {dim} ({size}) not divisible by tp {tp}: replicated (fallback)"
                ),
                Fallback::Chunk => write!(
                    f,
                    "dim {dim} ({size}) not divisible by tp {tp}: chunk split (fallback)"
                ),
                Fallback::Error => {
                    write!(f, "dim {dim} ({size}) not divisible by tp {tp}")
                }
            },
            DeriveNote::OptimizerShardDropped { axes: a, ways } => {
                write!(f, "optimizer shard over {} ({ways} ways) dropped", axes(a))
            }
            DeriveNote::DataSplitDropped { dim, axes: a, ways } => write!(
                f,
                "data-parallel split of dim {dim} over {} ({ways} ways) dropped",
                axes(a)
            ),
            DeriveNote::PartialReduced { axes: a } => {
                write!(f, "partial sums over {} reduced", axes(a))
            }
            DeriveNote::PinDropped { axis, coord } => {
                write!(f, "pin {axis}={coord} dropped")
            }
            DeriveNote::StageByLayer {
                layer,
                stage,
                stages,
                first,
                last,
            } => write!(
                f,
                "layer {layer} -> stage {stage} of {stages} (layers {first}-{last})"
            ),
            DeriveNote::StageMapped {
                from,
                from_count,
                to,
                to_count,
            } => write!(
                f,
                "{} of {from_count} -> {} of {to_count}",
                stage_list(from),
                stage_list(to)
            ),
            DeriveNote::StagesMerged { from, from_count } => {
                write!(
                    f,
                    "{} of {from_count} -> the single stage",
                    stage_list(from)
                )
            }
            DeriveNote::Shared { stages } => {
                write!(f, "shared (derive.shared): on all {stages} stages")
            }
            DeriveNote::SharedByLayers { layers, to, stages } => {
                let l: Vec<String> = layers.iter().map(u64::to_string).collect();
                write!(
                    f,
                    "shared (derive.shared) by layers {}: {} of {stages}",
                    l.join(", "),
                    stage_list(to)
                )
            }
            DeriveNote::EveryStage { stages } => write!(
                f,
                "no layer index, on every training stage: on all {stages} stages"
            ),
        }
    }
}

/// `stage 3`, or `stages 0, 3`.
fn stage_list(stages: &[u64]) -> String {
    let v: Vec<String> = stages.iter().map(u64::to_string).collect();
    match v.len() {
        1 => format!("stage {}", v[0]),
        _ => format!("stages {}", v.join(", ")),
    }
}

/// Why one tensor got its derived layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorReason {
    /// Tensor name.
    pub tensor: String,
    /// The rules that decided it, in the order applied.
    pub notes: Vec<DeriveNote>,
}

impl fmt::Display for TensorReason {
    /// The notes, separated by `; `.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, n) in self.notes.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{n}")?;
        }
        Ok(())
    }
}

/// A derived strategy with, per tensor, the reason for its layout.
#[derive(Debug, Clone)]
pub struct Derived {
    /// The derived strategy, named `derived` (see [`Derived::renamed`]).
    pub strategy: Strategy,
    /// One reason per tensor, parallel to the strategy's tensors.
    pub reasons: Vec<TensorReason>,
    /// The role of each axis of the training strategy's mesh.
    pub roles: Vec<(String, AxisRole)>,
    /// The target.
    pub target: DeriveTarget,
}

impl Derived {
    /// The same derivation with the strategy called `name`.
    ///
    /// # Errors
    ///
    /// None in practice: the strategy is rebuilt from its own parts.
    pub fn renamed(self, name: &str) -> Result<Self, DeriveError> {
        let strategy = self.strategy.renamed(name);
        Ok(Derived { strategy, ..self })
    }

    /// The reason for tensor `name`.
    pub fn reason(&self, name: &str) -> Option<&TensorReason> {
        self.reasons.iter().find(|r| r.tensor == name)
    }

    /// A text table: one line per tensor with its derived layout and the
    /// reason, after a header naming the source roles and the target.
    pub fn explain(&self, source: &str) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let roles: Vec<String> = self
            .roles
            .iter()
            .map(|(a, r)| format!("{a}: {r}"))
            .collect();
        let _ = writeln!(
            out,
            "derive `{source}` -> `{}` on {}",
            self.strategy.name(),
            self.target
        );
        if !roles.is_empty() {
            let _ = writeln!(out, "training axes: {}", roles.join(", "));
        }
        let width = self
            .reasons
            .iter()
            .map(|r| r.tensor.chars().count())
            .max()
            .unwrap_or(0)
            .min(60);
        let layouts: Vec<String> = self
            .strategy
            .layouts()
            .iter()
            .map(|l| l.to_string())
            .collect();
        let lw = layouts.iter().map(|l| l.len()).max().unwrap_or(0).min(40);
        for (r, l) in self.reasons.iter().zip(&layouts) {
            let _ = writeln!(out, "{:width$}  {l:lw$}  {r}", r.tensor);
        }
        out
    }
}
