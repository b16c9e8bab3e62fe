//! Errors of the core model. Each variant has a stable code (`shardplan::layout::*`);
//! the notations' faults have theirs (`shardplan::notation::<notation>::*`).

use crate::notation::fault::{DTensorFault, JaxFault, MindSporeFault};

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
    /// An explicit box whose rank count differs from the tensor's.
    #[error("the box of rank {rank} has {found} dimension(s) but the tensor has {expected}")]
    #[diagnostic(
        code(shardplan::layout::box_dims),
        help("give each box one offset and one size per tensor dimension")
    )]
    BoxDims {
        /// The rank.
        rank: u64,
        /// Dimensions of the box.
        found: usize,
        /// Dimensions of the tensor.
        expected: usize,
    },
    /// Two explicit boxes for one rank.
    #[error("rank {rank} is given two boxes")]
    #[diagnostic(
        code(shardplan::layout::box_twice),
        help("give each rank at most one box of each tensor")
    )]
    BoxTwice {
        /// The rank.
        rank: u64,
    },
    /// An explicit box reaching outside the tensor.
    #[error("the box {region} of rank {rank} reaches outside shape {shape:?}")]
    #[diagnostic(
        code(shardplan::layout::box_outside),
        help("offsets plus sizes must stay within the tensor's shape")
    )]
    BoxOutside {
        /// The rank.
        rank: u64,
        /// Its box.
        region: String,
        /// The tensor shape.
        shape: Vec<u64>,
    },
    /// Two explicit boxes that overlap without being the same box.
    #[error("the boxes {first_box} of rank {first} and {second_box} of rank {second} overlap")]
    #[diagnostic(
        code(shardplan::layout::box_overlap),
        help("boxes may overlap only as identical replicas; cut them so they share no element")
    )]
    BoxOverlap {
        /// The first rank.
        first: u64,
        /// Its box.
        first_box: String,
        /// The second rank.
        second: u64,
        /// Its box.
        second_box: String,
    },
    /// Explicit boxes that leave part of the tensor uncovered.
    #[error(
        "the boxes cover {covered} of the tensor's {total} elements; element {missing:?} is on no rank"
    )]
    #[diagnostic(
        code(shardplan::layout::box_gap),
        help("every element must be on at least one rank: add the missing boxes")
    )]
    BoxGap {
        /// Elements covered.
        covered: u64,
        /// Elements in the tensor.
        total: u64,
        /// One element no box holds.
        missing: Vec<u64>,
    },
    /// A MindSpore layout that does not make a layout, or a layout MindSpore
    /// cannot express.
    #[error("mindspore: {0}")]
    #[diagnostic(forward(0))]
    MindSpore(MindSporeFault),
    /// DTensor placements that do not parse or do not fit, or a layout
    /// DTensor cannot express.
    #[error("dtensor: {0}")]
    #[diagnostic(forward(0))]
    DTensor(DTensorFault),
    /// A JAX `PartitionSpec` that does not parse or does not fit, or a
    /// layout a `PartitionSpec` cannot express.
    #[error("jax: {0}")]
    #[diagnostic(forward(0))]
    Jax(JaxFault),
}
