//! Why a derivation failed: [`DeriveError`] and its fault details.

use crate::error::LayoutError;
use crate::pattern::PatternError;
use crate::strategy::StrategyError;

/// A tensor whose tensor-parallel split the target's degree does not divide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndivisibleTensor {
    /// Tensor name.
    pub tensor: String,
    /// Dimension.
    pub dim: usize,
    /// Its size.
    pub size: u64,
}

fn list_indivisible(v: &[IndivisibleTensor]) -> String {
    let mut s: Vec<String> = v
        .iter()
        .take(5)
        .map(|t| format!("`{}` dim {} ({})", t.tensor, t.dim, t.size))
        .collect();
    if v.len() > 5 {
        s.push(format!("and {} more", v.len() - 5));
    }
    s.join(", ")
}

/// Why a derivation failed. Each variant has a stable code
/// (`shardplan::derive::*`) and a help line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum DeriveError {
    /// A training layout given box by box, which names no axis to derive from.
    #[error("tensor `{tensor}` of the training strategy is laid out box by box, not by mesh axes")]
    #[diagnostic(
        code(shardplan::derive::explicit_boxes),
        help(
            "derive from the strategy that produced the checkpoint (its spec or strategy file), or give the inference layout directly"
        )
    )]
    ExplicitBoxes {
        /// The tensor.
        tensor: String,
    },
    /// The device count does not split into the degrees.
    #[error("{devices} devices cannot be arranged as tp {tp} x pp {pp} (x dp)")]
    #[diagnostic(
        code(shardplan::derive::target_shape),
        help("tp and pp must be at least 1 and tp * pp must divide the device count")
    )]
    TargetShape {
        /// Devices.
        devices: u64,
        /// Tensor-parallel degree.
        tp: u64,
        /// Pipeline stages.
        pp: u64,
    },
    /// The target mesh cannot be built (too many devices).
    #[error("target mesh: {0}")]
    #[diagnostic(code(shardplan::derive::target_mesh), help("derive for fewer devices"))]
    TargetMesh(#[source] LayoutError),
    /// A target axis name that is not on the target mesh.
    #[error("axis `{axis}` is not on the target mesh {mesh}")]
    #[diagnostic(
        code(shardplan::derive::unknown_axis),
        help("name axes of the target mesh")
    )]
    UnknownAxis {
        /// Axis.
        axis: String,
        /// Target mesh.
        mesh: String,
    },
    /// Target axes with conflicting roles.
    #[error(
        "the target mesh {mesh} gives axes {axes:?} conflicting roles (named twice, or several pipeline axes)"
    )]
    #[diagnostic(
        code(shardplan::derive::target_roles),
        help("name each axis once; set `derive: {{pp_axis: NAME}}` to pick the pipeline axis")
    )]
    TargetRoles {
        /// Target mesh.
        mesh: String,
        /// The axes.
        axes: Vec<String>,
    },
    /// The training strategy's axes have conflicting roles.
    #[error("strategy `{strategy}`: {fault}")]
    #[diagnostic(
        code(shardplan::derive::axis_roles),
        help(
            "say which axes are which in the spec: `derive: {{tp_axes: [..], dp_axes: [..], pp_axis: ..}}`"
        )
    )]
    AxisRoles {
        /// Strategy.
        strategy: String,
        /// What conflicts.
        fault: AxisRoleFault,
    },
    /// A tensor split over the pipeline axis.
    #[error("strategy `{strategy}`: tensor `{tensor}` is split over `{axis}`, a pipeline axis")]
    #[diagnostic(
        code(shardplan::derive::pipeline_split),
        help(
            "if `{axis}` is not a pipeline axis, list it under `derive: {{tp_axes: [..]}}` or `dp_axes`"
        )
    )]
    PipelineSplit {
        /// Strategy.
        strategy: String,
        /// Tensor.
        tensor: String,
        /// Axis.
        axis: String,
    },
    /// Tensor-parallel splits the target's degree does not divide, with
    /// the `error` fallback.
    #[error("{} tensor(s) cannot keep their tensor-parallel split at tp {tp}: {}", tensors.len(), list_indivisible(tensors))]
    #[diagnostic(
        code(shardplan::derive::indivisible),
        help(
            "pick a tp degree that divides these sizes, or set `derive: {{fallback: replicate}}` (or `chunk`)"
        )
    )]
    Indivisible {
        /// The target's tensor-parallel degree.
        tp: u64,
        /// The tensors, in declaration order.
        tensors: Vec<IndivisibleTensor>,
    },
    /// A pipelined target without a way to place layers.
    #[error(
        "the target has {stages} pipeline stages, but the training strategy has none and no layer pattern says where each tensor goes"
    )]
    #[diagnostic(
        code(shardplan::derive::no_layer_pattern),
        help(
            "set `derive: {{layer: \"model.layers.{{}}.*\"}}` with {{}} where the layer index is"
        )
    )]
    NoLayerPattern {
        /// Target stages.
        stages: u64,
    },
    /// A malformed layer pattern or glob.
    #[error("pattern `{pattern}`: {fault}")]
    #[diagnostic(
        code(shardplan::derive::pattern),
        help("layer patterns have one {{}} where the layer index is; globs use * and ?")
    )]
    Pattern {
        /// The pattern.
        pattern: String,
        /// What is wrong.
        fault: PatternError,
    },
    /// Stage ranges that do not fit the target.
    #[error("stage ranges: {fault}")]
    #[diagnostic(
        code(shardplan::derive::ranges),
        help("give one [first, last] range per target stage, covering every layer")
    )]
    Ranges {
        /// What is wrong.
        fault: RangeFault,
    },
    /// A `derive.shared` entry naming a layer the model does not have.
    #[error(
        "derive.shared `{pattern}` (tensor `{tensor}`): layer {layer} is not a layer of the model, which has {layers} layer(s)"
    )]
    #[diagnostic(
        code(shardplan::derive::shared_layer),
        help(
            "name layers by index from 0 to the last, or write `first` / `last`; the layer pattern decides which tensors are layers"
        )
    )]
    SharedLayer {
        /// The entry's glob.
        pattern: String,
        /// A tensor it matched.
        tensor: String,
        /// The layer named.
        layer: String,
        /// Layers found by the layer pattern.
        layers: u64,
    },
    /// A derived layout the core refuses (an internal inconsistency).
    #[error("tensor `{tensor}`: {source}")]
    #[diagnostic(code(shardplan::derive::layout))]
    Layout {
        /// Tensor.
        tensor: String,
        /// The refusal.
        #[source]
        source: LayoutError,
    },
    /// The derived strategy could not be built.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Strategy(#[from] StrategyError),
}

/// Why the training axes' roles conflict, one variant per fault. Every
/// fault shares the code and help of [`DeriveError::AxisRoles`]: the fix is
/// to name the roles in the spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AxisRoleFault {
    /// An unnamed axis that both splits some tensor and pins another.
    #[error("axis `{axis}` both splits tensors and pins them, so its role is unclear")]
    SplitsAndPins {
        /// The axis.
        axis: String,
    },
    /// More than one axis read as the pipeline.
    #[error("axes {axes:?} would all be pipeline axes")]
    SeveralPipelines {
        /// The axes, in mesh order.
        axes: Vec<String>,
    },
    /// A recorded optimizer shard the layout's dimension 0 does not carry.
    #[error(
        "tensor `{tensor}` records an optimizer shard of {ways} ways, but its layout {layout} does not split dimension 0 innermost that way"
    )]
    OptimizerShard {
        /// The tensor.
        tensor: String,
        /// The recorded shard size.
        ways: u64,
        /// Its training layout.
        layout: String,
    },
}

/// Why explicit stage ranges do not fit the target, one variant per fault.
/// Every fault shares the code and help of [`DeriveError::Ranges`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RangeFault {
    /// Not one range per target stage.
    #[error("{ranges} ranges for {stages} target stages")]
    Count {
        /// Ranges given.
        ranges: usize,
        /// Target pipeline stages.
        stages: u64,
    },
    /// A range whose first layer is after its last.
    #[error("range [{first}, {last}] is empty")]
    Empty {
        /// First layer.
        first: u64,
        /// Last layer.
        last: u64,
    },
    /// A layer that no range holds.
    #[error("tensor `{tensor}` is in layer {layer}, which no range holds")]
    Unheld {
        /// A tensor of that layer.
        tensor: String,
        /// The layer.
        layer: u64,
    },
}
