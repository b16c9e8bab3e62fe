//! Rust errors as the package's Python exceptions (`crate::exceptions`):
//! each carries the stable code, the help, and where known the file, line
//! and column or the tensor and rank at fault.

use miette::Diagnostic;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use shardplan::engine::EngineError;
use shardplan::formats::checkpoint::CheckpointError;
use shardplan::formats::hf::HfError;
use shardplan::formats::mindspore::strategy::{StrategyFileError, StrategyFileFault};
use shardplan::formats::plan_json::PlanFileError;
use shardplan::formats::torch::dcp::DcpError;
use shardplan::formats::torch::dcp_write::DcpWriteError;
use shardplan::import::{ImportError, LoadError};
use shardplan::reshard::ReshardError;
use shardplan::spec::{SpecDiagnostic, SpecError};
use shardplan::{LayoutError, PlanDefect, PlanError, StrategyError, derive::DeriveError};

pub(crate) use crate::exceptions::Class;

/// One error on its way to Python (boxed: results stay small).
#[derive(Debug, Default)]
pub(crate) struct Fault(Box<FaultInfo>);

impl std::ops::Deref for Fault {
    type Target = FaultInfo;
    fn deref(&self) -> &FaultInfo {
        &self.0
    }
}

impl std::ops::DerefMut for Fault {
    fn deref_mut(&mut self) -> &mut FaultInfo {
        &mut self.0
    }
}

/// The exception class and its attributes.
#[derive(Debug, Default)]
pub(crate) struct FaultInfo {
    class: Class,
    message: String,
    code: Option<String>,
    help: Option<String>,
    file: Option<String>,
    line: Option<usize>,
    column: Option<usize>,
    tensor: Option<String>,
    rank: Option<u64>,
    diagnostics: Vec<SpecDiagnostic>,
}

impl Fault {
    /// A fault of `class` with the message, code and help of `e`.
    pub(crate) fn of(class: Class, e: &dyn Diagnostic) -> Self {
        Fault(Box::new(FaultInfo {
            class,
            message: e.to_string(),
            code: e.code().map(|c| c.to_string()),
            help: e.help().map(|h| h.to_string()),
            ..FaultInfo::default()
        }))
    }

    /// A fault of the package's own making (bad arguments), with a code
    /// under `shardplan::python`.
    pub(crate) fn usage(message: impl Into<String>, help: impl Into<String>) -> Self {
        Fault(Box::new(FaultInfo {
            class: Class::Usage,
            message: message.into(),
            code: Some("shardplan::python::usage".into()),
            help: Some(help.into()),
            ..FaultInfo::default()
        }))
    }

    /// The same fault raised as `class` with `code`.
    pub(crate) fn with_class(mut self, class: Class, code: &str) -> Self {
        self.class = class;
        self.code = Some(code.to_string());
        self
    }

    /// The same fault naming `file`.
    pub(crate) fn file(mut self, file: impl Into<String>) -> Self {
        self.file = Some(file.into());
        self
    }

    fn tensor(mut self, tensor: impl Into<String>) -> Self {
        let t = tensor.into();
        self.tensor = (!t.is_empty()).then_some(t);
        self
    }

    fn rank(mut self, rank: u64) -> Self {
        self.rank = Some(rank);
        self
    }

    /// Builds the Python exception.
    fn to_pyerr(&self, py: Python<'_>) -> PyResult<PyErr> {
        let class = self.class.get(py)?;
        let kw = PyDict::new(py);
        kw.set_item("code", &self.code)?;
        kw.set_item("help", &self.help)?;
        kw.set_item("file", &self.file)?;
        kw.set_item("line", self.line)?;
        kw.set_item("column", self.column)?;
        kw.set_item("tensor", &self.tensor)?;
        kw.set_item("rank", self.rank)?;
        if !self.diagnostics.is_empty() {
            let ds = self
                .diagnostics
                .iter()
                .map(|d| crate::check::diagnostic(py, d))
                .collect::<PyResult<Vec<_>>>()?;
            kw.set_item("diagnostics", ds)?;
        }
        let value = class.call((&self.message,), Some(&kw))?;
        Ok(PyErr::from_value(value))
    }
}

impl From<Fault> for PyErr {
    fn from(f: Fault) -> PyErr {
        Python::attach(|py| match f.to_pyerr(py) {
            Ok(e) => e,
            Err(e) => PyRuntimeError::new_err(format!(
                "{} (and the exception could not be built: {e})",
                f.message
            )),
        })
    }
}

impl From<LayoutError> for Fault {
    fn from(e: LayoutError) -> Self {
        Fault::of(Class::Layout, &e)
    }
}

impl From<StrategyError> for Fault {
    fn from(e: StrategyError) -> Self {
        Fault::of(Class::Strategy, &e)
    }
}

impl From<PlanError> for Fault {
    fn from(e: PlanError) -> Self {
        Fault::of(Class::Plan, &e)
    }
}

impl From<DeriveError> for Fault {
    fn from(e: DeriveError) -> Self {
        Fault::of(Class::Derive, &e)
    }
}

impl From<SpecError> for Fault {
    fn from(e: SpecError) -> Self {
        Fault::of(Class::Spec, &e)
    }
}

impl From<PlanDefect> for Fault {
    fn from(e: PlanDefect) -> Self {
        let f = Fault::of(Class::PlanDefect, &e);
        match &e {
            PlanDefect::Tensor { tensor, .. } => f.tensor(tensor),
            PlanDefect::Piece {
                tensor, dst_rank, ..
            }
            | PlanDefect::Overlap {
                tensor, dst_rank, ..
            }
            | PlanDefect::Uncovered {
                tensor, dst_rank, ..
            } => f.tensor(tensor).rank(*dst_rank),
            _ => f,
        }
    }
}

impl From<PlanFileError> for Fault {
    fn from(e: PlanFileError) -> Self {
        let mut f = Fault::of(Class::PlanFile, &e).file(&e.file);
        if e.line > 0 {
            f.line = Some(e.line);
            f.column = Some(e.column);
        }
        f
    }
}

impl From<CheckpointError> for Fault {
    fn from(e: CheckpointError) -> Self {
        Fault::of(Class::Checkpoint, &e).file(&e.file)
    }
}

impl From<HfError> for Fault {
    fn from(e: HfError) -> Self {
        let class = if matches!(e, HfError::ShardSize { .. }) {
            Class::Usage
        } else {
            Class::Checkpoint
        };
        Fault::of(class, &e)
    }
}

impl From<DcpError> for Fault {
    fn from(e: DcpError) -> Self {
        Fault::of(Class::Checkpoint, &e)
    }
}

impl From<DcpWriteError> for Fault {
    fn from(e: DcpWriteError) -> Self {
        Fault::of(Class::Checkpoint, &e)
    }
}

impl Fault {
    /// The same fault naming the strategy file of `e`, and the line and
    /// column of a JSON syntax error.
    fn strategy_file(mut self, e: &StrategyFileError) -> Self {
        if let StrategyFileFault::Json { line, column, .. } = e.fault {
            self.line = Some(line);
            self.column = Some(column);
        }
        self.file(&e.file)
    }
}

impl From<StrategyFileError> for Fault {
    fn from(e: StrategyFileError) -> Self {
        Fault::of(Class::StrategyFile, &e).strategy_file(&e)
    }
}

impl From<EngineError> for Fault {
    fn from(e: EngineError) -> Self {
        match &e {
            EngineError::Io { path, .. } => {
                Fault::of(Class::File, &e).file(path.display().to_string())
            }
            EngineError::Config {
                path, line, column, ..
            } => {
                let mut f = Fault::of(Class::File, &e).file(path.display().to_string());
                f.line = Some(*line);
                f.column = Some(*column);
                f
            }
            EngineError::Sizes { path, .. } => {
                Fault::of(Class::File, &e).file(path.display().to_string())
            }
            _ => Fault::of(Class::Reshard, &e),
        }
    }
}

impl From<ImportError> for Fault {
    fn from(e: ImportError) -> Self {
        let f = Fault::of(Class::StrategyFile, &e);
        match &e {
            ImportError::Read(file) => f.strategy_file(file),
            _ => f,
        }
    }
}

impl From<ReshardError> for Fault {
    fn from(e: ReshardError) -> Self {
        match e {
            ReshardError::Checkpoint(e) => e.into(),
            ReshardError::StrategyFile(e) => e.into(),
            ReshardError::Plan(e) => e.into(),
            ReshardError::HuggingFace(e) => e.into(),
            ReshardError::DcpRead(e) => (*e).into(),
            ReshardError::Dcp(e) => e.into(),
            ReshardError::Io { ref path, .. } => Fault::of(Class::File, &e).file(path.clone()),
            e => Fault::of(Class::Reshard, &e),
        }
    }
}

impl From<LoadError> for Fault {
    fn from(e: LoadError) -> Self {
        match e {
            LoadError::Read { ref path, .. } => {
                let mut f = Fault::of(Class::File, &e).file(path.clone());
                // The OS's reason, which the message leaves to the source.
                if let Some(source) = std::error::Error::source(&e) {
                    f.message = format!("{}: {source}", f.message);
                }
                f
            }
            LoadError::Invalid {
                ref path,
                ref diagnostics,
            } => {
                let mut f = Fault::of(Class::Spec, &e).file(path.clone());
                if let Some(first) = diagnostics.iter().find(|d| d.is_error()) {
                    f.message = format!("{}: {}", f.message, first.one_line());
                    f.code = Some(first.code.as_str().to_string());
                    f.help = Some(first.help.clone());
                    f.line = Some(first.line);
                    f.column = Some(first.column);
                }
                f.diagnostics = diagnostics.clone();
                f
            }
            LoadError::Import(e) => e.into(),
            e => Fault::of(Class::Spec, &e),
        }
    }
}

/// `Result` of a binding: a [`Fault`] becomes the Python exception.
pub(crate) type Faulty<T> = Result<T, Fault>;

/// Converts any error that has a [`Fault`] into one.
pub(crate) fn fault<E: Into<Fault>>(e: E) -> Fault {
    e.into()
}
