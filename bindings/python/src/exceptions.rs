//! The package's exception classes, made by the extension when it is
//! imported: `Error` (a subclass of `Exception` whose `__init__` takes the
//! message and the keyword attributes `code`, `help`, `file`, `line`,
//! `column`, `tensor`, `rank`, `diagnostics`) and one subclass per kind of
//! fault; `UsageError` is also a `ValueError`, `FileError` an `OSError`.
//!
//! They are plain Python classes (built with `type(...)`), not
//! `#[pyclass]`es: an abi3 wheel for Python 3.9 cannot subclass
//! `Exception` in Rust, and `FileError` needs `OSError`'s layout.

use pyo3::exceptions::{PyException, PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyList, PyTuple, PyType};

/// The package's exception classes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    #[default]
    Error,
    Usage,
    File,
    Spec,
    Layout,
    Strategy,
    Derive,
    Plan,
    PlanDefect,
    PlanFile,
    Checkpoint,
    StrategyFile,
    Reshard,
}

impl Class {
    /// Every class, `Error` (the base of the others) first.
    const ALL: [Class; 13] = [
        Class::Error,
        Class::Usage,
        Class::File,
        Class::Spec,
        Class::Layout,
        Class::Strategy,
        Class::Derive,
        Class::Plan,
        Class::PlanDefect,
        Class::PlanFile,
        Class::Checkpoint,
        Class::StrategyFile,
        Class::Reshard,
    ];

    /// The class's Python name and docstring.
    fn name_and_doc(self) -> (&'static str, &'static str) {
        match self {
            Class::Error => (
                "Error",
                "Base class of every error shardplan raises: a stable ``code`` \
                 (docs/errors.md), a ``help`` saying how to fix the input, and \
                 where known the ``file``, ``line`` and ``column`` or the \
                 ``tensor`` and ``rank`` at fault.",
            ),
            Class::Usage => (
                "UsageError",
                "An argument of a shardplan function that it cannot use.",
            ),
            Class::File => ("FileError", "A file that cannot be read or written."),
            Class::Spec => (
                "SpecError",
                "A spec with errors; ``diagnostics`` lists every one.",
            ),
            Class::Layout => (
                "LayoutError",
                "A mesh, layout or notation that breaks an invariant.",
            ),
            Class::Strategy => (
                "StrategyError",
                "A strategy whose tensors and layouts disagree.",
            ),
            Class::Derive => ("DeriveError", "An inference layout that cannot be derived."),
            Class::Plan => (
                "PlanError",
                "Two strategies that cannot be planned between.",
            ),
            Class::PlanDefect => (
                "PlanDefect",
                "A plan that does not move the source to the destination exactly.",
            ),
            Class::PlanFile => ("PlanFileError", "A JSON plan file that cannot be read."),
            Class::Checkpoint => (
                "CheckpointError",
                "A checkpoint that is unreadable, truncated or corrupt.",
            ),
            Class::StrategyFile => (
                "StrategyFileError",
                "A MindSpore strategy file that cannot be read.",
            ),
            Class::Reshard => (
                "ReshardError",
                "Checkpoints and strategies that disagree with each other.",
            ),
        }
    }

    /// The class's Python name.
    pub(crate) fn name(self) -> &'static str {
        self.name_and_doc().0
    }

    /// The class, made when the extension was imported.
    pub(crate) fn get(self, py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
        let all = CLASSES.get_or_try_init(py, || make(py))?;
        Ok(all[self as usize].bind(py))
    }
}

/// The classes, in the order of [`Class::ALL`].
static CLASSES: PyOnceLock<Vec<Py<PyType>>> = PyOnceLock::new();

/// Adds every class to the extension module.
pub(crate) fn add(m: &Bound<'_, PyModule>) -> PyResult<()> {
    for class in Class::ALL {
        m.add(class.name(), class.get(m.py())?)?;
    }
    Ok(())
}

/// Builds the classes with `type(name, bases, namespace)`.
fn make(py: Python<'_>) -> PyResult<Vec<Py<PyType>>> {
    let type_ = py.get_type::<PyType>();
    let namespace = |doc: &str| -> PyResult<Bound<'_, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("__doc__", doc)?;
        d.set_item("__module__", "shardplan")?;
        Ok(d)
    };
    let (name, doc) = Class::Error.name_and_doc();
    let ns = namespace(doc)?;
    ns.set_item(
        "__init__",
        Method(wrap_pyfunction!(error_init, py)?.into_any().unbind()),
    )?;
    ns.set_item(
        "__str__",
        Method(wrap_pyfunction!(error_str, py)?.into_any().unbind()),
    )?;
    let error = type_
        .call1((name, (py.get_type::<PyException>(),), ns))?
        .cast_into::<PyType>()?;
    let mut out = vec![error.clone().unbind()];
    for class in &Class::ALL[1..] {
        let (name, doc) = class.name_and_doc();
        let bases = match class {
            Class::Usage => PyTuple::new(py, [error.clone(), py.get_type::<PyValueError>()])?,
            Class::File => PyTuple::new(py, [error.clone(), py.get_type::<PyOSError>()])?,
            _ => PyTuple::new(py, [error.clone()])?,
        };
        let made = type_.call1((name, bases, namespace(doc)?))?;
        out.push(made.cast_into::<PyType>()?.unbind());
    }
    Ok(out)
}

/// A Rust function as a method of a Python class: read from an instance,
/// it is bound to it (as a Python function would be).
#[pyclass(frozen)]
struct Method(Py<PyAny>);

#[pymethods]
impl Method {
    fn __get__<'py>(
        &self,
        py: Python<'py>,
        instance: Option<Bound<'py, PyAny>>,
        _owner: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        match instance {
            None => Ok(self.0.bind(py).clone()),
            Some(instance) => py
                .import("types")?
                .getattr("MethodType")?
                .call1((self.0.bind(py), instance)),
        }
    }
}

/// `Error.__init__`: the message (as the exception's one argument) and the
/// attributes.
#[pyfunction]
#[pyo3(signature = (slf, message, *, code = None, help = None, file = None, line = None,
    column = None, tensor = None, rank = None, diagnostics = None))]
#[allow(clippy::too_many_arguments)]
fn error_init<'py>(
    slf: &Bound<'py, PyAny>,
    message: Bound<'py, PyAny>,
    code: Option<Bound<'py, PyAny>>,
    help: Option<Bound<'py, PyAny>>,
    file: Option<Bound<'py, PyAny>>,
    line: Option<Bound<'py, PyAny>>,
    column: Option<Bound<'py, PyAny>>,
    tensor: Option<Bound<'py, PyAny>>,
    rank: Option<Bound<'py, PyAny>>,
    diagnostics: Option<Bound<'py, PyAny>>,
) -> PyResult<()> {
    let py = slf.py();
    // super(Error, self).__init__(message): OSError's for a FileError.
    let error = Class::Error.get(py)?;
    py.import("builtins")?
        .getattr("super")?
        .call1((error, slf))?
        .call_method1("__init__", (&message,))?;
    slf.setattr("message", message)?;
    for (name, value) in [
        ("code", code),
        ("help", help),
        ("file", file),
        ("line", line),
        ("column", column),
        ("tensor", tensor),
        ("rank", rank),
    ] {
        slf.setattr(name, value)?;
    }
    let list = match diagnostics {
        Some(d) => py.get_type::<PyList>().call1((d,))?,
        None => PyList::empty(py).into_any(),
    };
    slf.setattr("diagnostics", list)
}

/// `Error.__str__`: `[code] message`, then `help: ...` on its own line.
#[pyfunction]
fn error_str(slf: &Bound<'_, PyAny>) -> PyResult<String> {
    let mut text = slf.getattr("message")?.str()?.to_string();
    let code = slf.getattr("code")?;
    if code.is_truthy()? {
        text = format!("[{}] {text}", code.str()?);
    }
    let help = slf.getattr("help")?;
    if help.is_truthy()? {
        text = format!("{text}\n  help: {}", help.str()?);
    }
    Ok(text)
}
