//! Why the model cannot run, or did not match.

use std::ops::Range;

use crate::dtype::DType;
use crate::execute::ExecError;
use crate::geometry::Region;
use crate::planner::PlanError;
use crate::verify::PlanDefect;

/// Why the model cannot run, or did not match.
#[derive(Debug, Clone, PartialEq, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum ModelError {
    /// A tensor the model needs is absent.
    #[error("tensor `{tensor}` is missing from {place}")]
    #[diagnostic(
        code(shardplan::model::missing_tensor),
        help(
            "the model needs every tensor of ModelConfig::tensors, with Hugging Face Llama names"
        )
    )]
    MissingTensor {
        /// Tensor name.
        tensor: String,
        /// Where it was looked for.
        place: String,
    },
    /// A tensor with another shape than the model's.
    #[error("tensor `{tensor}` has shape {found:?}, the model expects {expected:?}")]
    #[diagnostic(
        code(shardplan::model::shape),
        help("weights are [out, in]; check the sizes against the embedding and layer 0")
    )]
    Shape {
        /// Tensor name.
        tensor: String,
        /// Shape the model expects.
        expected: Vec<u64>,
        /// Shape found.
        found: Vec<u64>,
    },
    /// A tensor that is not f32.
    #[error("tensor `{tensor}` is {dtype}; the model computes in f32")]
    #[diagnostic(
        code(shardplan::model::dtype),
        help("declare the model's tensors as f32")
    )]
    DType {
        /// Tensor name.
        tensor: String,
        /// Its dtype.
        dtype: DType,
    },
    /// Sizes that do not make a model; the code is the fault's.
    #[error("model configuration: {fault}")]
    #[diagnostic(forward(fault))]
    Config {
        /// What is wrong.
        fault: ConfigFault,
    },
    /// A token id outside the vocabulary.
    #[error(
        "sequence {sequence}, position {position}: token id {token} is outside the vocabulary of {vocab}"
    )]
    #[diagnostic(code(shardplan::model::token))]
    Token {
        /// Sequence of the batch.
        sequence: usize,
        /// Position in the sequence.
        position: usize,
        /// The id.
        token: u32,
        /// Vocabulary size.
        vocab: usize,
    },
    /// A layout the sharded forward does not support for this tensor; the
    /// code and help are the fault's.
    #[error("strategy `{strategy}`: tensor `{tensor}` {layout}: {fault}")]
    #[diagnostic(forward(fault))]
    UnsupportedLayout {
        /// Strategy name.
        strategy: String,
        /// Tensor name.
        tensor: String,
        /// Its layout.
        layout: String,
        /// What is wrong.
        fault: LayoutFault,
    },
    /// Two tensors of a block split in ways that do not compose.
    #[error(
        "strategy `{strategy}`: tensor `{tensor}` {layout} does not fit `{other}` {other_layout}: {fault}"
    )]
    #[diagnostic(
        code(shardplan::model::inconsistent_split),
        help(
            "attention: split q/k/v rows (heads) and o columns over the same axes; MLP: split gate/up rows and down columns over the same axes"
        )
    )]
    InconsistentSplit {
        /// Strategy name.
        strategy: String,
        /// The tensor at fault.
        tensor: String,
        /// Its layout.
        layout: String,
        /// The tensor it must agree with.
        other: String,
        /// That tensor's layout.
        other_layout: String,
        /// How they disagree.
        fault: SplitFault,
    },
    /// A split of q/k/v rows that cuts a head.
    #[error(
        "strategy `{strategy}`: tensor `{tensor}` {layout}: rank {rank} holds rows {rows}, which cut a head of {head_dim} rows"
    )]
    #[diagnostic(
        code(shardplan::model::head_split),
        help(
            "each rank must hold whole heads: the rows of q, k and v per rank must start and end at multiples of head_dim"
        )
    )]
    HeadSplit {
        /// Strategy name.
        strategy: String,
        /// Tensor name.
        tensor: String,
        /// Its layout.
        layout: String,
        /// The rank.
        rank: u64,
        /// The rows it holds, `a..b`.
        rows: String,
        /// Rows per head.
        head_dim: usize,
    },
    /// Tensors of one block pinned to different pipeline stages.
    #[error(
        "strategy `{strategy}`: `{tensor}` is on {pin} but `{other}` is on {other_pin}: {fault}"
    )]
    #[diagnostic(
        code(shardplan::model::stages),
        help(
            "pin all tensors of a layer (and the final norm with the output projection) to the same stage"
        )
    )]
    Stages {
        /// Strategy name.
        strategy: String,
        /// Tensor name.
        tensor: String,
        /// Its pins, `pp=1`.
        pin: String,
        /// The tensor it conflicts with.
        other: String,
        /// That tensor's pins.
        other_pin: String,
        /// What is wrong.
        fault: StageFault,
    },
    /// A shard store that does not hold what the strategy assigns; the
    /// code is the fault's.
    #[error("store: tensor `{tensor}`, rank {rank}: {fault}")]
    #[diagnostic(forward(fault))]
    Store {
        /// Tensor name.
        tensor: String,
        /// Rank.
        rank: u64,
        /// What is wrong.
        fault: StoreFault,
    },
    /// Planning the transfer failed.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Plan(#[from] PlanError),
    /// The plan did not verify.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Verify(#[from] PlanDefect),
    /// Executing the plan failed.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Exec(#[from] ExecError),
    /// Sharded and single-device logits differ beyond the tolerance.
    #[error(
        "logits differ by up to {max_abs_err:e} (relative {max_rel_err:e}, tolerance {tolerance:e}) at token {row}, vocabulary entry {column}"
    )]
    #[diagnostic(
        code(shardplan::model::tolerance),
        help(
            "summation order alone stays far below the tolerance; a weight is misplaced or the layout is computed wrongly"
        )
    )]
    Tolerance {
        /// Largest absolute difference.
        max_abs_err: f32,
        /// It, relative to the largest single-device logit magnitude.
        max_rel_err: f32,
        /// The tolerance.
        tolerance: f32,
        /// Token (row of the logits) of the largest difference.
        row: usize,
        /// Vocabulary entry of the largest difference.
        column: usize,
    },
}

const CONFIG_HELP: &str = "the sizes come from the tensors' shapes and `head_dim`; check them against a Llama configuration";

/// Why sizes do not make a model, one variant per fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum ConfigFault {
    /// A tensor with fewer dimensions than the model reads a size from.
    #[error("`{tensor}` has shape {shape:?}, too few dimensions")]
    #[diagnostic(code(shardplan::model::too_few_dimensions), help("{}", CONFIG_HELP))]
    TooFewDimensions {
        /// Tensor name.
        tensor: String,
        /// Its shape.
        shape: Vec<u64>,
    },
    /// A model with layers and a zero `head_dim`.
    #[error("head_dim is 0")]
    #[diagnostic(code(shardplan::model::zero_head_dim), help("{}", CONFIG_HELP))]
    ZeroHeadDim,
    /// A projection of layer 0 whose rows are not whole heads.
    #[error("layer 0 {projection} has {rows} rows, not a multiple of head_dim {head_dim}")]
    #[diagnostic(code(shardplan::model::head_rows), help("{}", CONFIG_HELP))]
    HeadRows {
        /// `q_proj` or `k_proj`.
        projection: &'static str,
        /// Its rows.
        rows: usize,
        /// Rows per head.
        head_dim: usize,
    },
    /// An empty vocabulary or hidden size.
    #[error("vocab {vocab} and hidden {hidden} must be positive")]
    #[diagnostic(code(shardplan::model::zero_size), help("{}", CONFIG_HELP))]
    ZeroSize {
        /// Vocabulary size.
        vocab: usize,
        /// Hidden size.
        hidden: usize,
    },
    /// Layers without heads.
    #[error("heads, kv_heads and head_dim must be positive")]
    #[diagnostic(code(shardplan::model::zero_heads), help("{}", CONFIG_HELP))]
    ZeroHeads,
    /// Key/value heads that do not divide the query heads.
    #[error("{kv_heads} kv heads do not divide {heads} query heads")]
    #[diagnostic(
        code(shardplan::model::kv_heads),
        help("grouped-query attention shares each kv head among heads / kv_heads query heads")
    )]
    KvHeads {
        /// Key/value heads.
        kv_heads: usize,
        /// Query heads.
        heads: usize,
    },
    /// An odd `head_dim`.
    #[error("head_dim {0} is odd; rotary embeddings rotate pairs")]
    #[diagnostic(code(shardplan::model::odd_head_dim), help("{}", CONFIG_HELP))]
    OddHeadDim(usize),
}

const STORE_HELP: &str = "run the model with a store built for the same strategy";

/// How a shard store differs from what the strategy assigns, one variant
/// per fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum StoreFault {
    /// The store has no such tensor.
    #[error("the store has no such tensor")]
    #[diagnostic(code(shardplan::model::not_in_store), help("{}", STORE_HELP))]
    NotInStore,
    /// The strategy assigns the rank no box of the tensor.
    #[error("the strategy assigns the rank nothing")]
    #[diagnostic(code(shardplan::model::nothing_assigned), help("{}", STORE_HELP))]
    NothingAssigned,
    /// The store holds another box than the strategy assigns.
    #[error("the store holds {}, the strategy assigns {assigned}", held_text(held))]
    #[diagnostic(code(shardplan::model::wrong_box), help("{}", STORE_HELP))]
    WrongBox {
        /// The box held, if any.
        held: Option<Region>,
        /// The box assigned.
        assigned: Region,
    },
    /// The store has the box but no buffer for it.
    #[error("no buffer")]
    #[diagnostic(code(shardplan::model::no_buffer), help("{}", STORE_HELP))]
    NoBuffer,
    /// A buffer whose length is not the box's f32 elements.
    #[error("the buffer has {bytes} bytes for {elements} f32 elements")]
    #[diagnostic(code(shardplan::model::buffer_size), help("{}", STORE_HELP))]
    BufferSize {
        /// Bytes in the buffer.
        bytes: usize,
        /// Elements of the box.
        elements: u64,
    },
}

fn held_text(held: &Option<Region>) -> String {
    held.as_ref()
        .map_or("nothing".to_string(), Region::to_string)
}

/// Mesh axis names as a layout writes a split: `tp`, or `(dp, tp)`.
fn axes_text(axes: &[String]) -> String {
    match axes {
        [one] => one.clone(),
        _ => format!("({})", axes.join(", ")),
    }
}

fn dims_text(dims: &[(usize, Vec<String>)]) -> String {
    let parts: Vec<String> = dims
        .iter()
        .map(|(d, axes)| format!("dimension {d} over {}", axes_text(axes)))
        .collect();
    parts.join(", ")
}

const LAYOUT_HELP: &str = "split a matmul weight along one dimension only (rows: column-parallel, columns: row-parallel), keep norms whole, and hold reduced values";

/// Why the sharded forward cannot run a tensor's layout, one variant per
/// fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum LayoutFault {
    /// A layout given box by box.
    #[error("the layout is given box by box; the model reads splits by mesh axis")]
    #[diagnostic(
        code(shardplan::model::explicit_layout),
        help("give the tensor a layout by mesh axes (`dims`)")
    )]
    Explicit,
    /// A layout on another mesh than its strategy's.
    #[error(
        "the layout is on mesh {layout_mesh}, not on the strategy's mesh {strategy_mesh}; the model reads axes by name from one mesh"
    )]
    #[diagnostic(
        code(shardplan::model::other_mesh),
        help("lay every tensor of the model out on the strategy's mesh")
    )]
    OtherMesh {
        /// The layout's mesh.
        layout_mesh: String,
        /// The strategy's mesh.
        strategy_mesh: String,
    },
    /// Partial sums.
    #[error("holds partial sums over {}; the model needs reduced weights", axes_text(.0))]
    #[diagnostic(code(shardplan::model::partial_weight), help("{}", LAYOUT_HELP))]
    Partial(Vec<String>),
    /// A weight split along more than one dimension.
    #[error(
        "split in both dimensions ({}); a weight may be split along one dimension only",
        dims_text(.0)
    )]
    #[diagnostic(code(shardplan::model::split_twice), help("{}", LAYOUT_HELP))]
    SplitTwice(Vec<(usize, Vec<String>)>),
    /// A split norm weight.
    #[error(
        "split over {}; a norm weight must be whole on every rank that uses it",
        axes_text(.0)
    )]
    #[diagnostic(code(shardplan::model::split_norm), help("{}", LAYOUT_HELP))]
    SplitNorm(Vec<String>),
    /// q, k or v split by columns.
    #[error(
        "split by columns (its input) over {}; q, k and v may split only their rows, by whole heads",
        axes_text(.0)
    )]
    #[diagnostic(code(shardplan::model::attention_columns), help("{}", LAYOUT_HELP))]
    AttentionColumns(Vec<String>),
    /// gate or up split by columns.
    #[error(
        "split by columns (its input) over {}; gate and up may split only their rows",
        axes_text(.0)
    )]
    #[diagnostic(code(shardplan::model::mlp_columns), help("{}", LAYOUT_HELP))]
    MlpColumns(Vec<String>),
}

/// How a weight of a block is split, as the consistency checks compare it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WeightSplit {
    /// Not split.
    Whole,
    /// Rows (dimension 0) split over these mesh axes.
    Rows(Vec<String>),
    /// Columns split over these mesh axes.
    Columns(Vec<String>),
}

impl std::fmt::Display for WeightSplit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WeightSplit::Whole => f.write_str("whole"),
            WeightSplit::Rows(axes) => write!(f, "split by rows over {}", axes_text(axes)),
            WeightSplit::Columns(axes) => write!(f, "split by columns over {}", axes_text(axes)),
        }
    }
}

/// A range as `a..b`.
pub(super) fn span_text(r: &Range<u64>) -> String {
    format!("{}..{}", r.start, r.end)
}

/// How two weights of one block disagree, one variant per fault. Every
/// fault shares the code and help of [`ModelError::InconsistentSplit`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SplitFault {
    /// k or v splits its rows otherwise than q.
    #[error(
        "it is {split} but q is {q}; q, k and v must split their rows (heads) over the same axes, so that each rank holds the keys and values of its query heads"
    )]
    KvAxes {
        /// How k or v is split.
        split: WeightSplit,
        /// How q is split.
        q: WeightSplit,
    },
    /// o split by rows (its output).
    #[error(
        "o_proj is split by rows (column-parallel) over {}; its columns (input, the heads) must be split like the rows of q ({q}) so that each rank multiplies its own heads and the results are summed",
        axes_text(axes)
    )]
    OutputRows {
        /// The axes splitting the rows of o.
        axes: Vec<String>,
        /// How q is split.
        q: WeightSplit,
    },
    /// o splits its columns over other axes than the heads.
    #[error(
        "o_proj is {split} but q is {q}; the columns of o must be split over the axes that split the heads"
    )]
    OutputAxes {
        /// How o is split.
        split: WeightSplit,
        /// How q is split.
        q: WeightSplit,
    },
    /// A rank's k/v heads do not serve its q heads.
    #[error(
        "rank {rank} holds q heads {} but k/v heads {}, which serve q heads {}..{}",
        span_text(q_heads),
        span_text(kv_heads),
        kv_heads.start * group,
        kv_heads.end * group
    )]
    KvHeads {
        /// The rank.
        rank: u64,
        /// Its query heads.
        q_heads: Range<u64>,
        /// Its key/value heads.
        kv_heads: Range<u64>,
        /// Query heads per key/value head.
        group: u64,
    },
    /// A rank's columns of o are not its rows of q.
    #[error(
        "rank {rank} holds columns {} of o_proj but rows {} of q; they must be the same heads",
        span_text(columns),
        span_text(rows)
    )]
    OutputHeads {
        /// The rank.
        rank: u64,
        /// Its columns of o.
        columns: Range<u64>,
        /// Its rows of q.
        rows: Range<u64>,
    },
    /// up splits its rows otherwise than gate.
    #[error(
        "it is {split} but gate is {gate}; gate and up must split their rows over the same axes"
    )]
    UpAxes {
        /// How up is split.
        split: WeightSplit,
        /// How gate is split.
        gate: WeightSplit,
    },
    /// down splits otherwise than by the columns gate and up split.
    #[error(
        "down_proj is {split} but gate is {gate}; the columns (input) of down must be split over the axes that split the rows of gate and up"
    )]
    DownAxes {
        /// How down is split.
        split: WeightSplit,
        /// How gate is split.
        gate: WeightSplit,
    },
    /// A rank's rows of up are not its rows of gate.
    #[error(
        "rank {rank} holds rows {} of up but rows {} of gate",
        span_text(up),
        span_text(gate)
    )]
    UpRows {
        /// The rank.
        rank: u64,
        /// Its rows of up.
        up: Range<u64>,
        /// Its rows of gate.
        gate: Range<u64>,
    },
    /// A rank's columns of down are not its rows of gate and up.
    #[error(
        "rank {rank} holds columns {} of down_proj but rows {} of gate and up",
        span_text(columns),
        span_text(rows)
    )]
    DownColumns {
        /// The rank.
        rank: u64,
        /// Its columns of down.
        columns: Range<u64>,
        /// Its rows of gate and up.
        rows: Range<u64>,
    },
}

/// Why the tensors of a block are not on one pipeline stage, one variant
/// per fault. Every fault shares the code and help of
/// [`ModelError::Stages`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StageFault {
    /// The embedding's tensors (a tied output projection among them) are
    /// pinned to different stages.
    #[error("the embedding's tensors must be on one pipeline stage")]
    Embedding,
    /// The tensors of one layer are pinned to different stages.
    #[error("the tensors of one layer must be on one pipeline stage")]
    Layer,
    /// The final norm and the output projection are on different stages.
    #[error("the final norm and the output projection must be on one pipeline stage")]
    Head,
    /// A block split over the axis that pins it.
    #[error("a block cannot split over the axis that pins it to a stage")]
    SplitOverPin,
    /// A rank of the block's replica does not hold one of its tensors.
    #[error("the block's rank does not hold the tensor")]
    NotHeld,
}
