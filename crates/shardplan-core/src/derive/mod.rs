//! Deriving inference layouts from a training strategy (`shardplan derive`).
//!
//! MindSpore's `infer_predict_layout` recompiles the network for the
//! inference devices: the weights then carry no optimizer shard and the
//! data-parallel axes only hold replicas. [`derive_strategy`] does the same
//! from parameter layouts alone, for any framework:
//!
//! - every axis of the training strategy has a role (see [`AxisRole`] and
//!   [`DeriveRules`]): tensor-parallel, data-parallel or pipeline;
//! - splits over data-parallel axes are dropped (the optimizer shard, the
//!   innermost data-parallel split of dimension 0, and FSDP-style shards),
//!   and so are partial-sum axes (the transfer reduces them) and pins on
//!   axes other than the pipeline axis;
//! - a dimension split over tensor-parallel axes keeps a split over the
//!   target's tensor-parallel axes when their size divides it (`even`), or
//!   whatever `chunk`/`balanced` policy training used; otherwise the rules'
//!   [`Fallback`] decides. When several dimensions are split over
//!   tensor-parallel axes, the one split most ways (the first on a tie)
//!   keeps the split;
//! - tensors with a layer index go to the pipeline stage that holds their
//!   layer, each stage holding a contiguous range of layers; other pinned
//!   tensors keep their relative stage (first stays first, last stays
//!   last), and a tensor on several training stages (a tied embedding)
//!   goes to each of their counterparts; a shared tensor goes to the
//!   stages of the layers that use it ([`SharedTensors`]), or to every
//!   stage, and so does a tensor on every training stage;
//! - a one-device target gets every tensor whole.
//!
//! For every tensor the result lists the rules that decided it
//! ([`DeriveNote`]).
//!
//! The other way, from MindSpore operator shard strategies, is in [`ops`].
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use shardplan_core::derive::{DeriveRules, DeriveTarget, derive_strategy};
//! use shardplan_core::*;
//!
//! // Training: data parallel 2 x tensor parallel 4, rows over tp, then
//! // optimizer-sharded over dp (the innermost split of dimension 0).
//! let train = Arc::new(DeviceMesh::new([("dp", 2), ("tp", 4)])?);
//! let w = TensorInfo { name: "w".into(), shape: vec![4096, 1024], dtype: DType::BF16 };
//! let cfg = LayoutConfig::new(vec![DimSplit::over(["tp", "dp"]), DimSplit::none()]);
//! let layout = TensorLayout::new(train.clone(), &w.shape, &cfg)?;
//! let src = Strategy::new("train", train, vec![w], vec![layout])?;
//!
//! // Inference on 2 devices, tensor parallel 2.
//! let target = DeriveTarget::from_degrees(2, 2, 1)?;
//! let derived = derive_strategy(&src, &target, &DeriveRules::default())?;
//! assert_eq!(derived.strategy.layout("w").unwrap().to_string(), "[tp, -]");
//! assert_eq!(
//!     derived.reasons[0].to_string(),
//!     "optimizer shard over dp (2 ways) dropped; tp split of dim 0 kept: 4 -> 2"
//! );
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod ops;

mod algorithm;
mod error;
mod notes;
mod rules;
mod target;
mod view;

pub use algorithm::derive_strategy;
pub use error::{AxisRoleFault, DeriveError, IndivisibleTensor, RangeFault};
pub use notes::{DeriveNote, Derived, TensorReason};
pub use rules::{AxisRole, DeriveRules, Fallback, LayerRef, SharedTensors, guess_role};
pub use target::DeriveTarget;
