// Unsafe code only where IO needs it, each function allowing it by name.
#![deny(unsafe_code)]
#![warn(missing_docs)]
// Invariants read as `if !(idx < len)`, the way they are stated.
#![allow(clippy::nonminimal_bool)]
//! shardplan: plan, verify and explain how model weights move between
//! parallel layouts.
//!
//! This crate is the one users add. It re-exports all of
//! [`shardplan-core`](shardplan_core) (meshes, layouts, the planner, the
//! verifier, the executor, derivation) and adds what touches files: YAML
//! specs ([`spec`]), reading any spec source ([`import`]), MindSpore strategy files and checkpoints, safetensors
//! and the plan JSON ([`formats`]), checkpoint resharding ([`reshard`]), and
//! text ([`report`], [`show`]).
//!
//! ```
//! use shardplan::*;
//!
//! let yaml = r#"
//! version: 1
//! meshes:
//!   train: {shape: [2, 4], axes: [dp, tp]}
//!   infer: {shape: [2], axes: [tp]}
//! tensors:
//!   - {name: w, shape: [4096, 1024], dtype: bf16}
//! strategies:
//!   train: {mesh: train, rules: [{match: "*", dims: [[tp, dp], null]}]}
//!   infer: {mesh: infer, rules: [{match: "*", dims: [tp, null]}]}
//! transfer: {from: train, to: infer}
//! "#;
//! let (spec, diagnostics) = spec::parse_spec("example.yaml", yaml);
//! assert!(diagnostics.is_empty());
//! let spec = spec.unwrap();
//! let (src, dst) = (spec.strategy("train").unwrap(), spec.strategy("infer").unwrap());
//! let config = PlanConfig::new(ReplicaChoice::Balance);
//! let plan = verify_plan(plan_transfer(src, dst, &config)?, src, dst)?;
//! assert_eq!(plan.summary().total_bytes, plan.summary().lower_bound_bytes);
//! // The plan as the JSON a runtime executes (docs/plan-format.md).
//! let json = formats::plan_json::to_json(&plan);
//! assert!(json.contains("\"format\""));
//! // A typo in a glob is an error with its line and column.
//! let typo = yaml.replace(r#""*", dims: [tp, null]"#, r#""v", dims: [tp, null]"#);
//! let (_, diagnostics) = spec::parse_spec("bad.yaml", &typo);
//! let d = diagnostics.iter().find(|d| d.code == spec::DiagCode::NoSuchTensor).unwrap();
//! assert_eq!((d.line, d.column), (10, 40));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Public API
//!
//! Everything of `shardplan-core` at the same paths (`shardplan::DeviceMesh`,
//! `shardplan::notation`, ...), and:
//!
//! | module | items |
//! |---|---|
//! | [`import`] | [`import::load`] (any file a spec can come from, [`import::detect`], [`import::LoadError`]), [`import::import_strategy`] and [`import::import_spec`] (MindSpore strategy files as specs, [`import::ShapeSource`], [`import::ImportError`]) |
//! | [`spec`] | [`spec::parse_spec`], [`spec::parse_spec_bytes`], [`spec::Spec`], [`spec::MeshId`], [`spec::SpecDiagnostic`], [`spec::DiagCode`], [`spec::write::write_spec`], [`spec::rules_for`], [`spec::derived_spec`] |
//! | [`formats`] | [`formats::plan_json`] (`to_json`, `from_json`); [`formats::detect::detect`] (every source format told apart); by family: [`formats::mindspore`] ([`formats::mindspore::strategy`]: `read_strategy_files`, `write_strategy_file`; [`formats::mindspore::rank_files`]), [`formats::checkpoint`] (one `.ckpt` or safetensors file: `read_index`, `CheckpointWriter`), [`formats::torch`] ([`formats::torch::dcp`]: `read_dcp`; [`formats::torch::dcp_write`]: `DcpLayout`, `TorchSaveItem`, `write_dcp_folder`), [`formats::hf`] (`read_hf_folder`, `read_safetensors_file`, `read_dcp_hf_folder`, `HfLayout`, `write_hf_folder`, `parse_shard_size`); [`formats::chunked`], [`formats::write_atomic`] |
//! | [`reshard`] | preparing: [`reshard::prepare`] from a [`reshard::ReshardConfig`] (sides as [`reshard::LayoutSource`]) to a read-only [`reshard::Prepared`]; chunked sources: [`reshard::read_chunked`], [`reshard::prepare_chunked`], [`reshard::checkpoint_strategy`]; a MindSpore folder's global tensors: [`reshard::tensors_from_checkpoints`]; writing: [`reshard::Prepared::write_rank`] with a [`reshard::WriteConfig`] ([`reshard::OutputFormat`], [`reshard::DEFAULT_MAX_SHARD_BYTES`]) to a [`reshard::RankOutcome`], or [`reshard::Prepared::read_rank_into`] buffers shaped by [`reshard::RankSlice`]; [`reshard::CopyThrough`], [`reshard::paths_overlap`], [`reshard::ranks_for_process`]; errors: [`reshard::ReshardError`], [`reshard::Side`] |
//! | [`engine`] | [`engine::engine_layout`] for an [`engine::Engine`] from a [`engine::ModelConfig`] (`config.json`) and the degrees: an [`engine::EngineLayout`] (the logical strategy and the core's [`storage::StorageMap`] of the engine's parameters); [`engine::EngineError`] |
//! | text | [`report::plan_report`], [`report::explain_tensor`], [`show::draw_holdings`] |
//!
//! # Overview
//!
//! - The core model: [`DeviceMesh`] (named axes, row-major ranks, optional
//!   device ids), [`TensorLayout`] (per dimension the axes that split it,
//!   split policies for uneven sizes, partial-sum axes, pins to a sub-mesh
//!   such as a pipeline stage), [`Region`] boxes, and [`Strategy`] (one
//!   layout per tensor).
//! - [`notation`]: conversions from and to MindSpore layouts (with the
//!   optimizer-shard group rule), DTensor placements and JAX PartitionSpecs.
//! - [`plan_transfer`] makes a [`SlicePlan`]; [`verify_plan`] checks one
//!   independently; [`volume_lower_bound`] is what any plan must move.
//! - This crate re-exports all of `shardplan-core` (the pure logic, which
//!   embedders can depend on alone) and adds the edge:
//!   [`spec`] reads YAML strategy specs with located diagnostics;
//!   [`formats`] reads and writes files; [`report`] and [`show`] make text.
//!
//! - [`execute_plan`] carries a plan out on real buffers ([`ShardStore`]),
//!   reducing partial sums; [`model`] runs a small transformer under any
//!   layout to check numerics; [`derive`](mod@derive) derives inference layouts;
//!   [`reshard`] moves real checkpoints file by file.
//!
//! # Not supported
//!
//! Destination layouts that hold partial sums (a destination holds reduced
//! values); pipeline stages in operator-based derivation.

pub use shardplan_core::*;

#[cfg(feature = "arbitrary")]
pub mod arbitrary;
pub mod engine;
pub mod formats;
#[doc(hidden)]
pub mod fuzzing;
pub mod import;
pub mod report;
pub mod reshard;
pub mod show;
pub mod spec;
