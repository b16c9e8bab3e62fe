//! Errors of the core model. Each variant has a stable code (`shardplan::layout::*`).

/// A mesh, layout or notation that violates an invariant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum LayoutError {
    /// A mesh axis has an empty name.
    #[error("mesh axis {index} has an empty name")]
    #[diagnostic(
        code(shardplan::layout::empty_axis_name),
        help("give every axis a name such as dp, tp or pp")
    )]
    EmptyAxisName {
        /// Position of the axis.
        index: usize,
    },
    /// A mesh axis of size 0.
    #[error("mesh axis `{axis}` has size 0")]
    #[diagnostic(
        code(shardplan::layout::zero_axis),
        help("every axis needs at least one position; drop the axis instead")
    )]
    ZeroAxis {
        /// Axis name.
        axis: String,
    },
    /// Two mesh axes with one name.
    #[error("mesh axis `{axis}` appears twice")]
    #[diagnostic(
        code(shardplan::layout::duplicate_mesh_axis),
        help("rename one of the axes")
    )]
    DuplicateMeshAxis {
        /// Axis name.
        axis: String,
    },
    /// The rank count overflows or exceeds the budget.
    #[error("a mesh of shape {shape:?} has more ranks than the budget of {max}")]
    #[diagnostic(
        code(shardplan::layout::too_many_ranks),
        help("check the mesh shape for a typo")
    )]
    TooManyRanks {
        /// The axis sizes.
        shape: Vec<u64>,
        /// The budget.
        max: u64,
    },
    /// The device id list does not have one id per rank.
    #[error("the mesh has {expected} ranks but {found} device ids")]
    #[diagnostic(
        code(shardplan::layout::device_id_count),
        help("list exactly one device id per rank, in rank order")
    )]
    DeviceIdCount {
        /// Rank count.
        expected: u64,
        /// Ids given.
        found: usize,
    },
    /// Two ranks on one device.
    #[error("device id {device} is listed twice")]
    #[diagnostic(
        code(shardplan::layout::duplicate_device_id),
        help("each rank runs on its own device")
    )]
    DuplicateDeviceId {
        /// The device id.
        device: u64,
    },
    /// A rank beyond the mesh.
    #[error("rank {rank} is outside a mesh of {rank_count} ranks")]
    #[diagnostic(code(shardplan::layout::rank_out_of_range))]
    RankOutOfRange {
        /// The rank.
        rank: u64,
        /// Ranks in the mesh.
        rank_count: u64,
    },
    /// Coordinates that do not fit the mesh.
    #[error("coordinates {coords:?} do not fit a mesh of shape {shape:?}")]
    #[diagnostic(code(shardplan::layout::coords_out_of_range))]
    CoordsOutOfRange {
        /// The coordinates.
        coords: Vec<u64>,
        /// The mesh shape.
        shape: Vec<u64>,
    },
    /// An element index outside the tensor.
    #[error("index {index:?} is outside shape {shape:?}")]
    #[diagnostic(code(shardplan::layout::index_out_of_range))]
    IndexOutOfRange {
        /// The index.
        index: Vec<u64>,
        /// The tensor shape.
        shape: Vec<u64>,
    },
    /// A shape whose element count overflows.
    #[error(
        "shape {shape:?} has more elements than the budget of {max} (or its element count overflows)"
    )]
    #[diagnostic(
        code(shardplan::layout::shape_overflow),
        help("check the shape for a typo")
    )]
    ShapeOverflow {
        /// The shape.
        shape: Vec<u64>,
        /// The budget.
        max: u64,
    },
    /// The layout does not have one split per tensor dimension.
    #[error("the layout has {splits} dimension split(s) but the tensor has {rank} dimension(s)")]
    #[diagnostic(
        code(shardplan::layout::dim_count),
        help("give one entry per tensor dimension; use null for a dimension that is not split")
    )]
    DimCount {
        /// Splits given.
        splits: usize,
        /// Tensor rank.
        rank: usize,
    },
    /// An axis name not on the mesh.
    #[error("axis `{axis}` is not on the mesh {mesh}")]
    #[diagnostic(
        code(shardplan::layout::unknown_axis),
        help("use one of the mesh's axis names")
    )]
    UnknownAxis {
        /// The axis.
        axis: String,
        /// The mesh, printed.
        mesh: String,
    },
    /// An axis used twice in one layout.
    #[error("axis `{axis}` is used twice in one layout: as {first} and as {second}")]
    #[diagnostic(
        code(shardplan::layout::axis_reused),
        help("an axis can split one dimension, hold partial sums, or pin, once")
    )]
    AxisReused {
        /// The axis.
        axis: String,
        /// Its first role.
        first: &'static str,
        /// Its second role.
        second: &'static str,
    },
    /// A pinned coordinate beyond its axis.
    #[error("pin {axis}={coord} is beyond the axis size {size}")]
    #[diagnostic(
        code(shardplan::layout::pin_out_of_range),
        help("coordinates count from 0")
    )]
    PinOutOfRange {
        /// The axis.
        axis: String,
        /// The coordinate.
        coord: u64,
        /// The axis size.
        size: u64,
    },
    /// An `even` split that does not divide.
    #[error("dimension {dim} of size {size} does not split evenly into {blocks} blocks")]
    #[diagnostic(
        code(shardplan::layout::uneven_split),
        help(
            "pick a split policy for uneven sizes (chunk, balanced or explicit blocks), or split over fewer ranks"
        )
    )]
    UnevenSplit {
        /// The dimension.
        dim: usize,
        /// Its size.
        size: u64,
        /// Blocks asked for.
        blocks: u64,
    },
    /// Explicit block sizes of the wrong count.
    #[error("dimension {dim} is split into {expected} blocks but {found} block sizes are given")]
    #[diagnostic(
        code(shardplan::layout::block_count),
        help(
            "give one size per block: the product of the sizes of the axes splitting the dimension"
        )
    )]
    BlockCount {
        /// The dimension.
        dim: usize,
        /// Blocks expected.
        expected: u64,
        /// Sizes given.
        found: usize,
    },
    /// Explicit block sizes that do not add up.
    #[error("the block sizes of dimension {dim} sum to {sum}, not to its size {size}")]
    #[diagnostic(
        code(shardplan::layout::block_sum),
        help("the block sizes must add up to the dimension size")
    )]
    BlockSum {
        /// The dimension.
        dim: usize,
        /// Its size.
        size: u64,
        /// Sum of the sizes given.
        sum: u64,
    },
    /// A layout that another notation cannot express, or notation text that
    /// does not parse.
    #[error("{notation}: {reason}")]
    #[diagnostic(code(shardplan::layout::notation), help("{help}"))]
    Notation {
        /// `mindspore`, `dtensor` or `jax`.
        notation: &'static str,
        /// What is wrong.
        reason: String,
        /// How to fix it.
        help: String,
    },
}

impl LayoutError {
    pub(crate) fn notation(
        notation: &'static str,
        reason: impl Into<String>,
        help: impl Into<String>,
    ) -> Self {
        LayoutError::Notation {
            notation,
            reason: reason.into(),
            help: help.into(),
        }
    }
}
