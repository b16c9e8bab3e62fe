//! Why a Hugging Face checkpoint cannot be read or written, one variant
//! per fault.

use super::*;

/// A Hugging Face or DCP Hugging Face checkpoint that cannot be read, a
/// folder whose format cannot be told, or a model folder that cannot be
/// planned or written.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum HfError {
    /// A file or folder could not be opened, listed, read or written.
    #[error("{path}: {message}")]
    #[diagnostic(
        code(shardplan::formats::hf::io),
        help("check the path and its permissions")
    )]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The operating system's message.
        message: String,
    },

    /// A safetensors file whose header cannot be read (its own code says
    /// why).
    #[error(transparent)]
    #[diagnostic(transparent)]
    Safetensors(#[from] CheckpointError),

    /// The index file is larger than [`MAX_INDEX_BYTES`].
    #[error("{path}: {len} bytes, more than the {budget} an index may have")]
    #[diagnostic(
        code(shardplan::formats::hf::index_too_large),
        help("an index maps tensor names to file names; this file is not one, or is corrupt")
    )]
    IndexTooLarge {
        /// The index file.
        path: PathBuf,
        /// Its length.
        len: u64,
        /// The budget.
        budget: u64,
    },

    /// The index is not JSON of the expected shape.
    #[error("{path}: not a model.safetensors.index.json: {message}")]
    #[diagnostic(
        code(shardplan::formats::hf::index_json),
        help(
            "the index is a JSON object with `weight_map` (tensor name to shard file name) and optionally `metadata.total_size`"
        )
    )]
    IndexJson {
        /// The index file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },

    /// A `weight_map` value that is not a plain file name in the folder.
    #[error("tensor `{tensor}` is mapped to `{file}`, {reason}")]
    #[diagnostic(
        code(shardplan::formats::hf::bad_shard_name),
        help(
            "weight_map values are file names inside the model folder, e.g. model-00001-of-00002.safetensors; paths are refused so an index cannot point outside its folder"
        )
    )]
    BadShardName {
        /// The tensor.
        tensor: String,
        /// The value of its entry.
        file: String,
        /// Why it is refused.
        reason: &'static str,
    },

    /// A shard the index names does not exist.
    #[error("{path}: missing, but the index maps `{tensor}` to it")]
    #[diagnostic(
        code(shardplan::formats::hf::missing_shard),
        help(
            "copy every shard the index names into the folder (an interrupted download leaves some out)"
        )
    )]
    MissingShard {
        /// The shard's path.
        path: PathBuf,
        /// A tensor mapped to it.
        tensor: String,
    },

    /// A shard lacks a tensor the index maps to it.
    #[error("{path}: has no tensor `{tensor}`, but the index maps it here")]
    #[diagnostic(
        code(shardplan::formats::hf::tensor_not_in_shard),
        help("the index and the shards come from different saves; download the model again")
    )]
    TensorNotInShard {
        /// The shard.
        path: PathBuf,
        /// The tensor.
        tensor: String,
    },

    /// One tensor stored in two shards, or listed twice in the index.
    #[error("tensor `{tensor}` is in both {first} and {second}")]
    #[diagnostic(
        code(shardplan::formats::hf::duplicate_tensor),
        help("a tensor must be stored once; the folder mixes files of different saves")
    )]
    DuplicateTensor {
        /// The tensor.
        tensor: String,
        /// Where the index maps it.
        first: String,
        /// The other place.
        second: String,
    },

    /// A shard holds a tensor the index does not list.
    #[error("{path}: holds tensor `{tensor}`, which the index does not list")]
    #[diagnostic(
        code(shardplan::formats::hf::unlisted_tensor),
        help(
            "loaders ignore tensors the index does not list; add it to the weight_map, or remove it from the shard"
        )
    )]
    UnlistedTensor {
        /// The shard.
        path: PathBuf,
        /// The tensor.
        tensor: String,
    },

    /// `metadata.total_size` is not the sum of the tensors' bytes.
    #[error("{path}: metadata.total_size is {declared} but the tensors hold {actual} bytes")]
    #[diagnostic(
        code(shardplan::formats::hf::total_size),
        help("the index and the shards come from different saves; download the model again")
    )]
    TotalSize {
        /// The index file.
        path: PathBuf,
        /// What the index says.
        declared: u64,
        /// The sum over the shards.
        actual: u64,
    },

    /// A folder with neither an index nor `model.safetensors`.
    #[error("{dir}: has neither {INDEX_NAME} nor {SINGLE_NAME}")]
    #[diagnostic(
        code(shardplan::formats::hf::not_a_model_folder),
        help("pass the folder that holds the model's safetensors files")
    )]
    NotAModelFolder {
        /// The folder.
        dir: PathBuf,
    },

    /// A DCP Hugging Face folder without `shard-*.safetensors` files.
    #[error("{dir}: holds no shard-*.safetensors file")]
    #[diagnostic(
        code(shardplan::formats::hf::no_shards),
        help("pass the folder HuggingFaceStorageWriter wrote (its `path`)")
    )]
    NoShards {
        /// The folder.
        dir: PathBuf,
    },

    /// `DCP_SHARDING_INFO` is larger than [`MAX_SHARDING_INFO_BYTES`].
    #[error("{path}: DCP_SHARDING_INFO has {len} bytes, more than the {budget} allowed")]
    #[diagnostic(
        code(shardplan::formats::hf::sharding_info_too_large),
        help("the header is corrupt; rewrite the checkpoint")
    )]
    ShardingInfoTooLarge {
        /// The shard.
        path: PathBuf,
        /// Its length.
        len: usize,
        /// The budget.
        budget: usize,
    },

    /// `DCP_SHARDING_INFO` is not a JSON object of
    /// `{"saved_offsets": [...]}` objects.
    #[error("{path}: DCP_SHARDING_INFO is not valid: {message}")]
    #[diagnostic(
        code(shardplan::formats::hf::sharding_info_json),
        help(
            "DCP_SHARDING_INFO is a JSON string mapping each tensor to {{\"saved_offsets\": [...]}}; the header is corrupt"
        )
    )]
    ShardingInfoJson {
        /// The shard.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },

    /// `DCP_SHARDING_INFO` names a tensor its file does not hold.
    #[error("{path}: DCP_SHARDING_INFO names `{tensor}`, which the file does not hold")]
    #[diagnostic(
        code(shardplan::formats::hf::sharding_info_tensor),
        help("the header is corrupt; rewrite the checkpoint")
    )]
    ShardingInfoTensor {
        /// The shard.
        path: PathBuf,
        /// The tensor.
        tensor: String,
    },

    /// A chunk's offsets do not have one entry per dimension of its shape.
    #[error("{path}: tensor `{tensor}` has {offsets} saved offsets for {dims} dimensions")]
    #[diagnostic(
        code(shardplan::formats::hf::offsets_arity),
        help("saved_offsets has one entry per dimension; the header is corrupt")
    )]
    OffsetsArity {
        /// The shard.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Offsets given.
        offsets: usize,
        /// Dimensions of the chunk.
        dims: usize,
    },

    /// Chunks of one tensor with different numbers of dimensions.
    #[error("{path}: a chunk of `{tensor}` has {other} dimensions, another has {first}")]
    #[diagnostic(
        code(shardplan::formats::hf::chunk_dims),
        help("the shards come from different saves; rewrite the checkpoint")
    )]
    ChunkDims {
        /// The shard of the second chunk.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Dimensions of the first chunk.
        first: usize,
        /// Dimensions of this one.
        other: usize,
    },

    /// Chunks of one tensor with different dtypes.
    #[error("{path}: a chunk of `{tensor}` is {other}, another is {first}")]
    #[diagnostic(
        code(shardplan::formats::hf::dtype_mismatch),
        help("the shards come from different saves; rewrite the checkpoint")
    )]
    DtypeMismatch {
        /// The shard of the second chunk.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// The first chunk's dtype.
        first: DType,
        /// This chunk's dtype.
        other: DType,
    },

    /// Sizes that overflow 64 bits or the element limit.
    #[error("tensor `{tensor}`: {what} overflows")]
    #[diagnostic(
        code(shardplan::formats::hf::overflow),
        help("the offsets or shapes are corrupt")
    )]
    Overflow {
        /// The tensor.
        tensor: String,
        /// What overflows, and where.
        what: String,
    },

    /// A safetensors file read as whole tensors holds chunks.
    #[error("{path}: holds chunks (DCP_SHARDING_INFO), not whole tensors")]
    #[diagnostic(
        code(shardplan::formats::hf::sharded_file),
        help("read the folder it is in as a DCP Hugging Face checkpoint")
    )]
    ShardedFile {
        /// The file.
        path: PathBuf,
    },

    /// Nothing at the path looks like a checkpoint shardplan reads.
    #[error("{path}: not a checkpoint shardplan can read; looked for {looked_for}")]
    #[diagnostic(
        code(shardplan::formats::hf::unknown_format),
        help(
            "pass a DCP folder (.metadata), a Hugging Face model folder (model.safetensors.index.json or model.safetensors), a HuggingFaceStorageWriter folder (shard-*.safetensors), a MindSpore folder (rank_<r>/), or a .safetensors file"
        )
    )]
    UnknownFormat {
        /// The path.
        path: PathBuf,
        /// What was looked for, and what was found.
        looked_for: String,
    },

    /// A `--max-shard-size` that is not a size.
    #[error("`{text}` is not a shard size: {reason}")]
    #[diagnostic(
        code(shardplan::formats::hf::shard_size),
        help(
            "give bytes, or a number with KB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024), e.g. 5GB"
        )
    )]
    ShardSize {
        /// The text given.
        text: String,
        /// Why it is refused.
        reason: &'static str,
    },

    /// A layout of no tensors.
    #[error("a model folder needs at least one tensor")]
    #[diagnostic(
        code(shardplan::formats::hf::no_tensors),
        help("pass the tensors to write")
    )]
    NoTensors,

    /// A name given twice, or one safetensors reserves, to the writer.
    #[error("tensor name `{name}` {reason}")]
    #[diagnostic(
        code(shardplan::formats::hf::bad_tensor_name),
        help("tensor names are unique, and `__metadata__` is the safetensors header's own key")
    )]
    BadTensorName {
        /// The name.
        name: String,
        /// Why it is refused.
        reason: &'static str,
    },

    /// Bytes given for a tensor that do not match its dtype and shape.
    #[error("tensor `{tensor}`: {actual} bytes given, its dtype and shape need {expected}")]
    #[diagnostic(
        code(shardplan::formats::hf::data_length),
        help("give each tensor's bytes whole, row-major")
    )]
    DataLength {
        /// The tensor.
        tensor: String,
        /// Bytes its dtype and shape need.
        expected: u64,
        /// Bytes given (`u64::MAX` when none were).
        actual: u64,
    },

    /// The target folder already holds a Hugging Face save.
    #[error("{path}: exists; writing here would mix two saves")]
    #[diagnostic(
        code(shardplan::formats::hf::stale_files),
        help("write into an empty folder, or remove the earlier save first")
    )]
    StaleFiles {
        /// The file found.
        path: PathBuf,
    },
}

impl HfError {
    pub(crate) fn io(path: &Path, e: &std::io::Error) -> Self {
        HfError::Io {
            path: path.to_path_buf(),
            message: e.to_string(),
        }
    }

    pub(crate) fn index_json(path: &Path, message: impl Into<String>) -> Self {
        HfError::IndexJson {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}
