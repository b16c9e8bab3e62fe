//! The `shardplan._shardplan` extension module: the Rust library bound for
//! Python. The pure-Python package `shardplan` (`python/shardplan/`) wraps
//! it into the documented API; heavy calls release the GIL.

mod check;
mod checkpoint;
mod engine;
mod errors;
mod exceptions;
mod layout;
mod plan;
mod strategy;

use pyo3::prelude::*;

/// Runs the `shardplan` command line `argv` (program name first) and
/// returns its exit status: the wheel's `shardplan` command.
#[pyfunction]
fn run_cli(py: Python<'_>, argv: Vec<String>) -> u8 {
    py.detach(|| shardplan_cli::run_status(argv))
}

/// Every dtype as `(name, bytes per element)`, in `shardplan::DType::ALL`'s
/// order: the one table the package's numpy and torch spellings derive from.
#[pyfunction]
fn _dtypes() -> Vec<(&'static str, u64)> {
    shardplan::DType::ALL
        .iter()
        .map(|d| (d.name(), d.size_bytes()))
        .collect()
}

#[pymodule]
fn _shardplan(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<layout::PyMesh>()?;
    m.add_class::<layout::PyLayout>()?;
    m.add_class::<strategy::PyStrategy>()?;
    m.add_class::<strategy::PySpec>()?;
    m.add_class::<plan::PyPlan>()?;
    m.add_class::<plan::PyPiece>()?;
    m.add_function(wrap_pyfunction!(strategy::load, m)?)?;
    m.add_function(wrap_pyfunction!(strategy::derive, m)?)?;
    m.add_function(wrap_pyfunction!(strategy::read_strategy, m)?)?;
    m.add_function(wrap_pyfunction!(plan::plan, m)?)?;
    #[cfg(feature = "bench")]
    m.add_function(wrap_pyfunction!(plan::_timed_plan, m)?)?;
    m.add_function(wrap_pyfunction!(checkpoint::_load_rank, m)?)?;
    m.add_function(wrap_pyfunction!(checkpoint::reshard, m)?)?;
    m.add_function(wrap_pyfunction!(checkpoint::_parse_shard_size, m)?)?;
    m.add_function(wrap_pyfunction!(check::_check, m)?)?;
    m.add_function(wrap_pyfunction!(run_cli, m)?)?;
    m.add_function(wrap_pyfunction!(_dtypes, m)?)?;
    exceptions::add(m)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
