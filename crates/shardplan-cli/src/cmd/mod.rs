//! One module per subcommand; each handler returns the exit code, or a
//! report for a usage error (exit 2).

pub(crate) mod check;
pub(crate) mod derive;
pub(crate) mod plan;
pub(crate) mod reshard;
pub(crate) mod reshard_engine;
pub(crate) mod show;
pub(crate) mod simulate;
pub(crate) mod strategy_files;
