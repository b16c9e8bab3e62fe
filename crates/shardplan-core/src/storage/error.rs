//! Why a storage map does not fit its strategy, or cannot be carried out.

use super::Segment;
use crate::geometry::Region;

/// A storage map that does not store what its strategy assigns, or a
/// parameter that cannot hold its segments. Each variant names the rank,
/// the parameter and, where one is involved, the logical tensor.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum StorageError {
    /// The map has parameters for another number of ranks than the mesh.
    #[error("the storage map describes {map} ranks but the strategy's mesh has {mesh}")]
    #[diagnostic(
        code(shardplan::storage::rank_count),
        help("give one list of parameters per rank of the destination mesh")
    )]
    RankCount {
        /// Ranks in the map.
        map: u64,
        /// Ranks of the mesh.
        mesh: u64,
    },
    /// Two parameters of one rank share a name.
    #[error("rank {rank}: parameter `{param}` is given twice")]
    #[diagnostic(
        code(shardplan::storage::duplicate_param),
        help("each parameter of a rank has one name; merge the two or rename one")
    )]
    DuplicateParam {
        /// The rank.
        rank: u64,
        /// The parameter.
        param: String,
    },
    /// A parameter whose element count overflows the element budget.
    #[error("rank {rank}: parameter `{param}` of shape {shape:?} is too large")]
    #[diagnostic(
        code(shardplan::storage::param_shape),
        help("a parameter holds at most 2^56 elements")
    )]
    ParamShape {
        /// The rank.
        rank: u64,
        /// The parameter.
        param: String,
        /// Its shape.
        shape: Vec<u64>,
    },
    /// A segment names a tensor the strategy does not have.
    #[error("rank {rank}: parameter `{param}` stores `{tensor}`, which the strategy does not have")]
    #[diagnostic(
        code(shardplan::storage::unknown_tensor),
        help("name a logical tensor of the destination strategy")
    )]
    UnknownTensor {
        /// The rank.
        rank: u64,
        /// The parameter.
        param: String,
        /// The tensor named.
        tensor: String,
    },
    /// A segment of another dtype than its parameter.
    #[error(
        "rank {rank}: parameter `{param}` is {param_dtype} but stores `{tensor}`, which is {tensor_dtype}"
    )]
    #[diagnostic(
        code(shardplan::storage::dtype),
        help("a parameter holds tensors of its own dtype; casting is not a layout")
    )]
    DType {
        /// The rank.
        rank: u64,
        /// The parameter.
        param: String,
        /// The tensor.
        tensor: String,
        /// The parameter's dtype.
        param_dtype: crate::DType,
        /// The tensor's dtype.
        tensor_dtype: crate::DType,
    },
    /// A segment's logical box is empty or outside its tensor.
    #[error(
        "rank {rank}: parameter `{param}` stores box {} of `{}`, which is empty or outside its shape {shape:?}",
        .segment.logical,
        .segment.tensor
    )]
    #[diagnostic(
        code(shardplan::storage::outside_tensor),
        help("a segment stores a non-empty box inside the logical tensor")
    )]
    OutsideTensor {
        /// The rank.
        rank: u64,
        /// The parameter.
        param: String,
        /// The segment.
        segment: Box<Segment>,
        /// The tensor's shape.
        shape: Vec<u64>,
    },
    /// A segment that does not fit in its parameter: placed past its end,
    /// or with fewer parameter dimensions than the box has.
    #[error(
        "rank {rank}: `{}` box {} placed at {:?} does not fit parameter `{param}` of shape {shape:?}",
        .segment.tensor, .segment.logical, .segment.at
    )]
    #[diagnostic(
        code(shardplan::storage::outside_param),
        help(
            "place the box inside the parameter; extra leading parameter dimensions (stacking) take extent 1"
        )
    )]
    OutsideParam {
        /// The rank.
        rank: u64,
        /// The parameter.
        param: String,
        /// The segment.
        segment: Box<Segment>,
        /// The parameter's shape.
        shape: Vec<u64>,
    },
    /// Two segments of one parameter share parameter elements.
    #[error(
        "rank {rank}: parameter `{param}` places `{first}` and `{second}` on the same elements"
    )]
    #[diagnostic(
        code(shardplan::storage::overlap),
        help("segments of a parameter occupy disjoint parts of it")
    )]
    Overlap {
        /// The rank.
        rank: u64,
        /// The parameter.
        param: String,
        /// The first segment's tensor.
        first: String,
        /// The second segment's tensor.
        second: String,
    },
    /// A segment stores elements its rank does not hold under the layout.
    #[error(
        "rank {rank}: parameter `{param}` stores box {} of `{}`, but the layout gives the rank {held}",
        .segment.logical,
        .segment.tensor
    )]
    #[diagnostic(
        code(shardplan::storage::not_held),
        help("a rank stores only what its layout assigns it; fix the layout or the segment")
    )]
    NotHeld {
        /// The rank.
        rank: u64,
        /// The parameter.
        param: String,
        /// The segment.
        segment: Box<Segment>,
        /// What the rank holds (`nothing` when it holds no part).
        held: String,
    },
    /// A rank holds part of a tensor that none of its parameters stores.
    #[error(
        "rank {rank} holds {missing} of `{tensor}` under the layout, but no parameter stores it"
    )]
    #[diagnostic(
        code(shardplan::storage::unstored),
        help("add a segment for it, or change the layout so the rank does not hold it")
    )]
    Unstored {
        /// The rank.
        rank: u64,
        /// The tensor.
        tensor: String,
        /// A box held and not stored.
        missing: Region,
    },
    /// A plan piece that adds partial sums, which storage execution does
    /// not carry out (reduce into logical buffers first).
    #[error("tensor `{tensor}`: the plan adds partial sums, which are not written into parameters")]
    #[diagnostic(
        code(shardplan::storage::partial),
        help("execute into a ShardStore first, then pack it with StorageMap::pack")
    )]
    Partial {
        /// The tensor.
        tensor: String,
    },
    /// A plan or a source store that does not match the map.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Exec(#[from] crate::ExecError),
}
