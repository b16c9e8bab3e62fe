//! The command line: clap types, one variant per subcommand.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "shardplan",
    version,
    about = "Plan, verify and explain how model weights move between parallel layouts"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Check spec files; report every problem in every file.
    ///
    /// Exit status: 0 when all files are valid (warnings allowed), 1 when
    /// any is invalid, 2 on a usage error or an unreadable file.
    Check {
        /// Spec files (YAML).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// Treat warnings as errors.
        #[arg(long)]
        strict: bool,
    },
    /// Draw which ranks hold which block of one tensor.
    Show {
        /// Spec file, or a checkpoint whose index is its layout (a PyTorch
        /// DCP folder, a Hugging Face folder, a safetensors file).
        spec: PathBuf,
        /// Strategy name (required for a spec; a checkpoint has one).
        #[arg(long)]
        strategy: Option<String>,
        /// Tensor name.
        #[arg(long)]
        tensor: String,
        /// Maximum width of the drawing, in columns.
        #[arg(long, default_value_t = 100)]
        width: usize,
        #[command(flatten)]
        engine: ShowEngineArgs,
    },
    /// Plan the transfer between two strategies of a spec.
    Plan(PlanArgs),
    /// Check a JSON plan against a spec; exit 0 when valid, 1 when not.
    Verify {
        /// Spec file.
        spec: PathBuf,
        /// Plan file (JSON).
        plan: PathBuf,
    },
    /// Plan, verify and execute a transfer on synthetic buffers in memory,
    /// and check every destination element; exit 1 on any mismatch.
    Simulate(SimulateArgs),
    /// Reshard checkpoints file by file: N source ranks to M destination
    /// ranks, each output written atomically and recorded in a manifest.
    Reshard(ReshardArgs),
    /// Print the JSON Schema of the spec format (docs/spec.schema.json).
    Schema,
    /// Turn MindSpore strategy files into a spec.
    Import {
        /// Strategy files (one, a merged one, or one per pipeline stage).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Output spec.
        #[arg(short, long)]
        output: PathBuf,
        /// Name of the strategy (and its mesh) in the spec.
        #[arg(long, default_value = "mindspore")]
        name: String,
        /// Take shapes and dtypes from this checkpoint directory (rank_<r>/
        /// folders) instead of the files (protobuf files record none).
        #[arg(long)]
        shapes_from: Option<PathBuf>,
        /// Dtype of the tensors when the shapes come from the files.
        #[arg(long, default_value = "f32")]
        dtype: String,
    },
    /// Write a strategy of a spec as a MindSpore strategy file.
    Export {
        /// Spec file (or a strategy file).
        spec: PathBuf,
        /// Strategy name.
        #[arg(long)]
        strategy: String,
        /// Output form.
        #[arg(long, value_enum)]
        format: ExportFormat,
        /// Output file; stdout when absent.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Merge per-stage strategy files into one (MindSpore's
    /// merge_pipeline_strategys).
    MergeStages {
        /// Directory holding one strategy file per stage.
        dir: PathBuf,
        /// Output file; `.json` writes JSON, anything else protobuf.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Explain in words why a tensor moves what it moves.
    Explain {
        /// Spec file.
        spec: PathBuf,
        #[command(flatten)]
        ends: Ends,
        /// Tensor name.
        #[arg(long)]
        tensor: String,
    },
    /// Derive an inference strategy from a training strategy and write a
    /// spec holding both (and the spec's other strategies), with a transfer
    /// from the training strategy to the derived one.
    ///
    /// The spec goes to stdout, or to --output; --explain prints one line
    /// per tensor saying which rules decided its layout (to stdout with
    /// --output, to stderr otherwise). Exit status: 0 on success, 1 when
    /// the spec is invalid or the derivation is refused, 2 on a usage error.
    Derive(DeriveArgs),
}

/// Which strategies to plan between; defaults to the spec's `transfer`.
#[derive(clap::Args)]
pub(crate) struct Ends {
    /// Source strategy.
    #[arg(long)]
    pub(crate) from: Option<String>,
    /// Destination strategy.
    #[arg(long)]
    pub(crate) to: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ExportFormat {
    MindsporeJson,
    MindsporePb,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum CkptFormat {
    /// MindSpore .ckpt per rank.
    Ckpt,
    /// safetensors per rank.
    Safetensors,
    /// A Hugging Face model folder (per rank when there are several).
    Hf,
    /// A PyTorch DCP folder (.metadata + __<r>_0.distcp).
    Dcp,
}

#[derive(clap::Args)]
pub(crate) struct ReshardArgs {
    /// Source: a folder of rank_<r>/ folders (MindSpore), a PyTorch DCP
    /// folder, a Hugging Face model folder, or a safetensors file; the
    /// format is detected.
    #[arg(long)]
    pub(crate) src: PathBuf,
    /// Source strategy: MindSpore strategy file(s) (repeat for per-stage
    /// files), or a spec (its transfer's `from`, or SPEC#strategy). Absent:
    /// one device holding whole tensors.
    #[arg(long)]
    pub(crate) src_strategy: Vec<PathBuf>,
    /// Destination strategy, likewise (a spec's transfer `to`). Absent: one
    /// device.
    #[arg(long)]
    pub(crate) dst_strategy: Vec<PathBuf>,
    /// Output directory.
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// Output format; the source's when absent.
    #[arg(long, value_enum)]
    pub(crate) format: Option<CkptFormat>,
    /// Produce only this destination rank (else RANK, SLURM_PROCID or
    /// OMPI_COMM_WORLD_RANK when set, else all).
    #[arg(long)]
    pub(crate) rank: Option<u64>,
    /// Balance sends over replicas instead of reading the fewest files.
    #[arg(long)]
    pub(crate) balance: bool,
    /// Allow device counts that do not divide each other (MindSpore refuses).
    #[arg(long)]
    pub(crate) any_device_count: bool,
    /// Write through the page cache instead of with direct IO (which
    /// keeps the sources cached while a large output is written; used
    /// only where the file system supports it).
    #[arg(long)]
    pub(crate) no_direct_io: bool,
    /// Largest shard of a Hugging Face output, as huggingface_hub writes
    /// it: 5GB, 500MB, 24KB (powers of 1000) or 1GiB (of 1024).
    #[arg(long, default_value = "5GB")]
    pub(crate) max_shard_size: String,
    /// Write an inference engine's own parameters instead: each rank's
    /// rank_<r>/model.safetensors with the engine's names, fused tensors,
    /// shapes and zero padding (vllm: the Llama family).
    #[arg(long, value_enum, conflicts_with_all = ["dst_strategy", "format"])]
    pub(crate) engine: Option<EngineArg>,
    /// The engine's tensor-parallel degree.
    #[arg(long, requires = "engine")]
    pub(crate) tp: Option<u64>,
    /// Experts spread whole over the tensor-parallel ranks (vLLM's
    /// --enable-expert-parallel) instead of split by them.
    #[arg(long, requires = "engine")]
    pub(crate) ep: bool,
    /// The model's config.json; the source folder's when absent.
    #[arg(long, requires = "engine")]
    pub(crate) config: Option<PathBuf>,
}

/// `show` on an inference engine's destination for a checkpoint.
#[derive(clap::Args)]
pub(crate) struct ShowEngineArgs {
    /// Show the checkpoint on an inference engine's ranks instead: for an
    /// engine parameter (e.g. ...qkv_proj.weight), the logical boxes each
    /// rank's copy holds and its padding; for a logical tensor, its
    /// holdings on the engine's ranks.
    #[arg(long, value_enum)]
    pub(crate) engine: Option<EngineArg>,
    /// The engine's tensor-parallel degree.
    #[arg(long, requires = "engine")]
    pub(crate) tp: Option<u64>,
    /// Experts spread whole over the ranks.
    #[arg(long, requires = "engine")]
    pub(crate) ep: bool,
    /// The model's config.json; the checkpoint folder's when absent.
    #[arg(long, requires = "engine")]
    pub(crate) config: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum EngineArg {
    /// vLLM's tensor-parallel parameters.
    Vllm,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    Text,
    Json,
}

/// The arguments of `plan`.
#[derive(clap::Args)]
pub(crate) struct PlanArgs {
    /// Spec file.
    pub(crate) spec: PathBuf,
    #[command(flatten)]
    pub(crate) ends: Ends,
    /// Plan only the tensors matching this glob.
    #[arg(long)]
    pub(crate) tensor: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub(crate) format: Format,
    /// Write the plan to this file (written atomically) instead of stdout.
    #[arg(short, long)]
    pub(crate) output: Option<PathBuf>,
    /// Pick replicas to minimise the files each destination rank reads,
    /// instead of balancing the send volume.
    #[arg(long)]
    pub(crate) min_files: bool,
    /// Tensors and ranks listed in the text report.
    #[arg(long, default_value_t = 10)]
    pub(crate) top: usize,
}

/// The arguments of `simulate`.
#[derive(clap::Args)]
pub(crate) struct SimulateArgs {
    /// Spec file.
    pub(crate) spec: PathBuf,
    #[command(flatten)]
    pub(crate) ends: Ends,
    /// Simulate only the tensors matching this glob.
    #[arg(long)]
    pub(crate) tensor: Option<String>,
    /// Pick replicas to minimise files read instead of balancing sends.
    #[arg(long)]
    pub(crate) min_files: bool,
    /// Execute the destination buffers in parallel.
    #[arg(long)]
    pub(crate) parallel: bool,
    /// Refuse to allocate more than this many MiB of buffers.
    #[arg(long, default_value_t = 4096)]
    pub(crate) max_memory_mib: u64,
    /// Also run the spec's model (a Llama-like transformer; see
    /// `shardplan::model`) on one device and under the destination
    /// layout, from weights moved by the plan, and compare the logits.
    #[arg(long)]
    pub(crate) model: bool,
}

/// The arguments of `derive`.
#[derive(clap::Args)]
pub(crate) struct DeriveArgs {
    /// Spec file.
    pub(crate) spec: PathBuf,
    /// Training strategy; defaults to the source of the spec's transfer,
    /// or to the spec's only strategy.
    #[arg(long)]
    pub(crate) from: Option<String>,
    /// Derive for this mesh of the spec (axis roles from the names or
    /// the spec's `derive:` section).
    #[arg(long, conflicts_with_all = ["devices", "tp", "pp", "operators"], required_unless_present_any = ["devices", "operators"])]
    pub(crate) target: Option<String>,
    /// Derive for this many devices, on the mesh [pp, dp, tp] without
    /// its axes of size 1; with --operators, the devices of the stage
    /// (default: the `operators:` section's).
    #[arg(long)]
    pub(crate) devices: Option<u64>,
    /// Tensor-parallel degree; defaults to devices / pp.
    #[arg(long, requires = "devices")]
    pub(crate) tp: Option<u64>,
    /// Pipeline stages.
    #[arg(long, requires = "devices", default_value_t = 1)]
    pub(crate) pp: u64,
    /// Name of the derived strategy.
    #[arg(long, default_value = "derived")]
    pub(crate) name: String,
    /// Write the spec to this file (atomically) instead of stdout.
    #[arg(short, long)]
    pub(crate) output: Option<PathBuf>,
    /// Print the reason for every tensor's layout (with --operators:
    /// every operator's device matrix and tensor maps, each weight's
    /// source, and the redistributions).
    #[arg(long)]
    pub(crate) explain: bool,
    /// Derive from the spec's `operators:` section (MindSpore operator
    /// shard strategies) instead of a training strategy.
    #[arg(long, conflicts_with_all = ["tp", "pp"])]
    pub(crate) operators: bool,
    /// With --operators: the batch (default: the section's).
    #[arg(long, requires = "operators")]
    pub(crate) batch: Option<u64>,
}
