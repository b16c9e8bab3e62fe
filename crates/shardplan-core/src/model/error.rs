//! Why the model cannot run, or did not match.

use crate::dtype::DType;
use crate::execute::ExecError;
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
    /// Sizes that do not make a model.
    #[error("model configuration: {reason}")]
    #[diagnostic(code(shardplan::model::config))]
    Config {
        /// What is wrong.
        reason: String,
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
    /// A layout the sharded forward does not support for this tensor.
    #[error("strategy `{strategy}`: tensor `{tensor}` {layout}: {reason}")]
    #[diagnostic(
        code(shardplan::model::unsupported_layout),
        help(
            "split a matmul weight along one dimension only (rows: column-parallel, columns: row-parallel), keep norms whole, and hold reduced values"
        )
    )]
    UnsupportedLayout {
        /// Strategy name.
        strategy: String,
        /// Tensor name.
        tensor: String,
        /// Its layout.
        layout: String,
        /// What is wrong.
        reason: String,
    },
    /// Two tensors of a block split in ways that do not compose.
    #[error(
        "strategy `{strategy}`: tensor `{tensor}` {layout} does not fit `{other}` {other_layout}: {reason}"
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
        reason: String,
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
        "strategy `{strategy}`: `{tensor}` is on {pin} but `{other}` is on {other_pin}: {reason}"
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
        reason: String,
    },
    /// A shard store that does not hold what the strategy assigns.
    #[error("store: tensor `{tensor}`, rank {rank}: {reason}")]
    #[diagnostic(
        code(shardplan::model::store),
        help("run the model with a store built for the same strategy")
    )]
    Store {
        /// Tensor name.
        tensor: String,
        /// Rank.
        rank: u64,
        /// What is wrong.
        reason: String,
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
