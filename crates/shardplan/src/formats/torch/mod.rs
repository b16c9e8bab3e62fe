//! PyTorch's files: Distributed Checkpoint folders read ([`dcp`]) and
//! written ([`dcp_write`]), and below them the restricted pickle machine
//! (`pickle/`, with the writer) and one `torch.save` archive's tensor
//! (`zip.rs`).

pub mod dcp;
pub mod dcp_write;
pub(crate) mod pickle;
pub(crate) mod zip;
