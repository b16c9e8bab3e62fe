//! File formats at the edge of the crate: each converts between bytes and
//! the core types, and nothing else reads or writes files.

pub mod checkpoint;
pub mod chunked;
pub mod dcp;
pub mod dcp_write;
pub(crate) mod dtype_names;
pub mod hf;
pub(crate) mod io;
pub mod mindspore_strategy;
pub mod pickle;
mod pickle_write;
pub mod plan_json;
pub mod torch_zip;

pub use io::write_atomic;
