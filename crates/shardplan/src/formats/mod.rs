//! File formats at the edge of the crate: each converts between bytes and
//! the core types, and nothing else reads or writes files.
//!
//! By family: [`mindspore`] (strategy files, `.ckpt` checkpoints, rank
//! folders), `safetensors` (the header index and writer), [`torch`]
//! (PyTorch DCP folders, read and written), [`hf`] (Hugging Face folders);
//! [`checkpoint`] reads and writes one `.ckpt` or safetensors file whichever
//! it is; [`detect`] tells every source format apart; [`chunked`] is the
//! index every chunked reader produces; [`plan_json`] the plan schema.
//! Below them: `tensor_index` (the index types and errors of one file),
//! `dtype_names` (each format's dtype names) and `io` (atomic writes,
//! checksums, positional reads, the pipelined output file).

pub mod checkpoint;
pub mod chunked;
pub mod detect;
pub(crate) mod dtype_names;
pub mod hf;
pub(crate) mod io;
pub mod mindspore;
pub mod plan_json;
pub(crate) mod safetensors;
pub(crate) mod tensor_index;
pub mod torch;

pub use io::write_atomic;
