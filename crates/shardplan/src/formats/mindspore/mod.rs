//! MindSpore's files: strategy files ([`strategy`]), `.ckpt` checkpoints
//! (their index and framing, read and written through
//! [`crate::formats::checkpoint`]), and the `rank_<r>/` folders a
//! checkpoint directory holds ([`rank_files`]).

pub(crate) mod ckpt;
mod rank_files;
pub mod strategy;

pub use rank_files::rank_files;
