//! `plan` and `Plan`: a verified slice-transfer plan between two
//! strategies, with its summary, pieces, explanation and JSON form.

use std::sync::Arc;

use std::path::PathBuf;

use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyDict, PyList};
use shardplan::formats::{plan_json, write_atomic};
use shardplan::{
    PlanConfig, ReplicaChoice, Strategy, VerifiedPlan, check_plan, plan_transfer, report,
    verify_plan,
};

use crate::errors::{Class, Fault, Faulty, fault};
use crate::layout::region_tuple;
use crate::strategy::PyStrategy;

/// A replica choice by name.
pub(crate) fn replica_choice(name: &str) -> Faulty<ReplicaChoice> {
    match name {
        "balance" => Ok(ReplicaChoice::Balance),
        "min_files" => Ok(ReplicaChoice::MinFiles),
        other => Err(Fault::usage(
            format!("`{other}` is not a replica choice"),
            "use \"balance\" (spread the sending) or \"min_files\" (read few files)",
        )),
    }
}

/// One copy of a plan: a box of a tensor from a source rank to a
/// destination rank.
#[pyclass(name = "Piece", module = "shardplan", frozen, get_all)]
pub(crate) struct PyPiece {
    /// Tensor name.
    tensor: String,
    /// Source rank.
    src_rank: u64,
    /// Destination rank.
    dst_rank: u64,
    /// The box's offset in the global tensor.
    offset: Vec<u64>,
    /// The box's extent.
    extent: Vec<u64>,
    /// Where the box starts in the source rank's local buffer.
    src_offset: Vec<u64>,
    /// Where the box starts in the destination rank's local buffer.
    dst_offset: Vec<u64>,
    /// Bytes of the box.
    bytes: u64,
    /// True when source and destination are one device (no network).
    local: bool,
    /// True when the destination adds the box into a partial sum.
    reduce: bool,
}

#[pymethods]
impl PyPiece {
    fn __repr__(&self) -> String {
        format!(
            "Piece({:?}, {} -> {}, offset={:?}, extent={:?}, {} bytes{})",
            self.tensor,
            self.src_rank,
            self.dst_rank,
            self.offset,
            self.extent,
            self.bytes,
            if self.local { ", local" } else { "" }
        )
    }
}

/// A slice-transfer plan that passed the independent verifier: which
/// source rank sends which box of which tensor to which destination rank.
///
/// Made by `plan` or read by `Plan.from_json`; never built unverified.
#[pyclass(name = "Plan", module = "shardplan", frozen)]
pub(crate) struct PyPlan {
    plan: Arc<VerifiedPlan>,
    src: Arc<Strategy>,
    dst: Arc<Strategy>,
}

/// Plans moving every tensor (or those named) from `src` to `dst` and
/// verifies the plan.
#[pyfunction]
#[pyo3(signature = (src, dst, *, replicas = "balance", tensors = None))]
pub(crate) fn plan(
    py: Python<'_>,
    src: &PyStrategy,
    dst: &PyStrategy,
    replicas: &str,
    tensors: Option<Vec<String>>,
) -> Faulty<PyPlan> {
    plan_timed(py, src, dst, replicas, tensors).map(|(p, _)| p)
}

/// [`plan`] with the seconds the Rust planner and verifier took inside the
/// call, for the benchmark of the binding's overhead
/// (`benches/python/bench_python.py`). Only with the `bench` feature.
#[cfg(feature = "bench")]
#[pyfunction]
pub(crate) fn _timed_plan(
    py: Python<'_>,
    src: &PyStrategy,
    dst: &PyStrategy,
    replicas: &str,
) -> Faulty<(PyPlan, f64)> {
    plan_timed(py, src, dst, replicas, None)
}

/// Plans and verifies without the GIL; returns the plan and the seconds
/// the two took.
fn plan_timed(
    py: Python<'_>,
    src: &PyStrategy,
    dst: &PyStrategy,
    replicas: &str,
    tensors: Option<Vec<String>>,
) -> Faulty<(PyPlan, f64)> {
    let mut config = PlanConfig::new(replica_choice(replicas)?);
    config.tensors = tensors;
    let (s, d) = (src.inner.clone(), dst.inner.clone());
    let (verified, seconds) = py.detach(|| -> Faulty<(VerifiedPlan, f64)> {
        let start = std::time::Instant::now();
        let plan = plan_transfer(&s, &d, &config).map_err(fault)?;
        let verified = verify_plan(plan, &s, &d).map_err(fault)?;
        Ok((verified, start.elapsed().as_secs_f64()))
    })?;
    let plan = PyPlan {
        plan: Arc::new(verified),
        src: s,
        dst: d,
    };
    Ok((plan, seconds))
}

/// Bytes of a `Plan.to_numpy` record before the per-dimension fields:
/// tensor (u32), source and destination rank and bytes (u64), local,
/// reduce and ndim (one byte each).
const RECORD_FIXED_BYTES: usize = 4 + 3 * 8 + 3;

/// The OS's reason for `e`, without Rust's `(os error N)` suffix.
fn io_reason(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

impl PyPlan {
    fn pieces_matching(
        &self,
        tensor: Option<&str>,
        src_rank: Option<u64>,
        dst_rank: Option<u64>,
    ) -> Vec<PyPiece> {
        let mut out = Vec::new();
        for t in self
            .plan
            .tensors
            .iter()
            .filter(|t| tensor.is_none_or(|n| n == t.name))
        {
            for p in &t.pieces {
                if src_rank.is_some_and(|r| r != p.src_rank)
                    || dst_rank.is_some_and(|r| r != p.dst_rank)
                {
                    continue;
                }
                let (offset, extent) = region_tuple(&p.dst_box);
                out.push(PyPiece {
                    tensor: t.name.clone(),
                    src_rank: p.src_rank,
                    dst_rank: p.dst_rank,
                    offset,
                    extent,
                    src_offset: p.src_box.offset().to_vec(),
                    dst_offset: p.dst_local_offset.clone(),
                    bytes: t.piece_bytes(p),
                    local: p.local,
                    reduce: p.reduce,
                });
            }
        }
        out
    }
}

#[pymethods]
impl PyPlan {
    /// The plan's totals: the keys of the JSON plan's `summary`.
    #[getter]
    fn summary<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.plan.summary();
        let d = PyDict::new(py);
        d.set_item("total_bytes", s.total_bytes)?;
        d.set_item("lower_bound_bytes", s.lower_bound_bytes)?;
        d.set_item("local_bytes", s.local_bytes)?;
        d.set_item("max_send_bytes", s.max_send_bytes)?;
        d.set_item("max_send_lower_bound_bytes", s.max_send_lower_bound_bytes)?;
        d.set_item("max_recv_bytes", s.max_recv_bytes)?;
        d.set_item("messages", s.messages)?;
        d.set_item("pieces", s.pieces)?;
        Ok(d)
    }

    /// Per-rank traffic: `{"send": {rank: {...}}, "receive": {rank: {...}}}`.
    #[getter]
    fn ranks<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let (send, recv) = self.plan.traffic();
        let out = PyDict::new(py);
        let s = PyDict::new(py);
        for (rank, t) in send {
            let d = PyDict::new(py);
            d.set_item("bytes", t.send_bytes)?;
            d.set_item("messages", t.sent_messages)?;
            s.set_item(rank, d)?;
        }
        let r = PyDict::new(py);
        for (rank, t) in recv {
            let d = PyDict::new(py);
            d.set_item("bytes", t.recv_bytes)?;
            d.set_item("messages", t.received_messages)?;
            d.set_item("local_bytes", t.local_bytes)?;
            d.set_item("files", t.files.iter().copied().collect::<Vec<u64>>())?;
            r.set_item(rank, d)?;
        }
        out.set_item("send", s)?;
        out.set_item("receive", r)?;
        Ok(out)
    }

    /// The source strategy the plan was verified against.
    #[getter]
    fn src(&self) -> crate::strategy::PyStrategy {
        crate::strategy::PyStrategy {
            inner: self.src.clone(),
            rules: None,
            derivation: None,
        }
    }

    /// The destination strategy the plan was verified against.
    #[getter]
    fn dst(&self) -> crate::strategy::PyStrategy {
        crate::strategy::PyStrategy {
            inner: self.dst.clone(),
            rules: None,
            derivation: None,
        }
    }

    /// The source strategy's name.
    #[getter]
    fn source(&self) -> &str {
        &self.plan.source
    }

    /// The destination strategy's name.
    #[getter]
    fn destination(&self) -> &str {
        &self.plan.destination
    }

    /// `"balance"` or `"min_files"`.
    #[getter]
    fn replicas(&self) -> &'static str {
        match self.plan.replica_choice {
            ReplicaChoice::Balance => "balance",
            ReplicaChoice::MinFiles => "min_files",
        }
    }

    /// Names of the planned tensors, in plan order (`to_numpy`'s `tensor`
    /// column indexes this list).
    #[getter]
    fn tensors(&self) -> Vec<String> {
        self.plan.tensors.iter().map(|t| t.name.clone()).collect()
    }

    /// Checks the plan again with the independent verifier against the
    /// strategies. Returns `None`, or raises `PlanDefect` naming the
    /// tensor, rank and box at fault.
    fn verify(&self, py: Python<'_>) -> Faulty<()> {
        py.detach(|| {
            check_plan(self.plan.plan(), &self.src, &self.dst)
                .map(|_| ())
                .map_err(fault)
        })
    }

    /// The pieces, optionally only those of `tensor`, from `src_rank` or
    /// to `dst_rank`.
    #[pyo3(signature = (*, tensor = None, src_rank = None, dst_rank = None))]
    fn pieces(
        &self,
        tensor: Option<&str>,
        src_rank: Option<u64>,
        dst_rank: Option<u64>,
    ) -> Vec<PyPiece> {
        self.pieces_matching(tensor, src_rank, dst_rank)
    }

    /// Every piece as one row of a numpy structured array.
    ///
    /// Fields: `tensor` (index into `tensors`), `src_rank`, `dst_rank`,
    /// `bytes`, `local`, `reduce`, `ndim`, and per dimension (arrays of the
    /// largest tensor rank, padded with 0 for offsets and 1 for extents):
    /// `offset` (in the global tensor), `src_offset` (in the source rank's
    /// local buffer), `dst_offset` (in the destination rank's local buffer),
    /// `extent`.
    fn to_numpy<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let ndim = self
            .plan
            .tensors
            .iter()
            .map(|t| t.shape.len())
            .max()
            .unwrap_or(0);
        // Packed records, native byte order: the fields of `dtype` below.
        let data = py.detach(|| {
            let rows: usize = self.plan.tensors.iter().map(|t| t.pieces.len()).sum();
            let mut data = Vec::with_capacity(rows * (RECORD_FIXED_BYTES + 32 * ndim));
            for (i, t) in self.plan.tensors.iter().enumerate() {
                let n = t.shape.len();
                for p in &t.pieces {
                    data.extend_from_slice(&(i as u32).to_ne_bytes());
                    for v in [p.src_rank, p.dst_rank, t.piece_bytes(p)] {
                        data.extend_from_slice(&v.to_ne_bytes());
                    }
                    data.extend_from_slice(&[u8::from(p.local), u8::from(p.reduce), n as u8]);
                    for (v, pad) in [
                        (p.dst_box.offset(), 0u64),
                        (p.src_box.offset(), 0),
                        (&p.dst_local_offset[..], 0),
                        (p.dst_box.extent(), 1),
                    ] {
                        for x in v.iter().copied().chain(std::iter::repeat_n(pad, ndim - n)) {
                            data.extend_from_slice(&x.to_ne_bytes());
                        }
                    }
                }
            }
            data
        });
        let np = py.import("numpy")?;
        let (u64_, u32_, u8_, bool_) = (
            np.getattr("uint64")?,
            np.getattr("uint32")?,
            np.getattr("uint8")?,
            np.getattr("bool_")?,
        );
        let dims = (ndim,);
        let fields = PyList::empty(py);
        fields.append(("tensor", &u32_))?;
        for name in ["src_rank", "dst_rank", "bytes"] {
            fields.append((name, &u64_))?;
        }
        fields.append(("local", &bool_))?;
        fields.append(("reduce", &bool_))?;
        fields.append(("ndim", &u8_))?;
        for name in ["offset", "src_offset", "dst_offset", "extent"] {
            fields.append((name, &u64_, dims))?;
        }
        let dtype = np.call_method1("dtype", (fields,))?;
        // A bytearray keeps the array writable, as `np.empty` would.
        np.call_method1("frombuffer", (PyByteArray::new(py, &data), dtype))
    }

    /// Why tensor `name` moves what it moves: its layouts on both sides,
    /// its pieces and their bounds, as text.
    fn explain(&self, name: &str) -> Faulty<String> {
        let t = self
            .plan
            .tensors
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| {
                Fault::usage(
                    format!("the plan has no tensor `{name}`"),
                    "names are matched exactly; `plan.tensors` lists them",
                )
            })?;
        Ok(report::explain_tensor(&self.src, &self.dst, t))
    }

    /// The human report `shardplan plan` prints, with the `top` largest
    /// movers.
    #[pyo3(signature = (top = 5))]
    fn report(&self, top: usize) -> String {
        report::plan_report(&self.plan, top)
    }

    /// The plan in the JSON plan format (`docs/plan-format.md`). With
    /// `path`, also written there by the library's atomic writer (a
    /// temporary name, fsynced, renamed, the folder fsynced).
    #[pyo3(signature = (path = None))]
    fn to_json(&self, py: Python<'_>, path: Option<PathBuf>) -> Faulty<String> {
        py.detach(|| {
            let text = plan_json::to_json(&self.plan) + "\n";
            if let Some(path) = path {
                write_atomic(&path, text.as_bytes()).map_err(|e| {
                    Fault::usage(
                        format!("cannot write {}: {}", path.display(), io_reason(&e)),
                        "check that the folder exists and is writable",
                    )
                    .with_class(Class::File, "shardplan::python::write")
                    .file(path.display().to_string())
                })?;
            }
            Ok(text)
        })
    }

    /// Reads a JSON plan and verifies it moves `src` to `dst`: raises
    /// `PlanFileError` for a malformed file, `PlanDefect` for a plan that
    /// does not move `src` to `dst` exactly.
    #[staticmethod]
    fn from_json(
        py: Python<'_>,
        path: PathBuf,
        src: &PyStrategy,
        dst: &PyStrategy,
    ) -> Faulty<PyPlan> {
        let (s, d) = (src.inner.clone(), dst.inner.clone());
        let plan = py.detach(|| -> Faulty<VerifiedPlan> {
            let name = path.display().to_string();
            let raw = std::fs::read(&path).map_err(|e| {
                Fault::usage(
                    format!("cannot read {name}: {}", io_reason(&e)),
                    "check the path",
                )
                .with_class(Class::File, "shardplan::python::read")
                .file(name.clone())
            })?;
            let text = String::from_utf8(raw).map_err(|e| {
                Fault::usage(
                    format!("{name}: not UTF-8 at byte {}", e.utf8_error().valid_up_to()),
                    "plan files are JSON, written by `shardplan plan --format json`",
                )
                .with_class(Class::PlanFile, "shardplan::formats::plan_json")
                .file(name.clone())
            })?;
            let plan = plan_json::from_json(&name, &text).map_err(fault)?;
            verify_plan(plan, &s, &d).map_err(fault)
        })?;
        Ok(PyPlan {
            plan: Arc::new(plan),
            src: s,
            dst: d,
        })
    }

    fn __len__(&self) -> usize {
        self.plan.tensors.iter().map(|t| t.pieces.len()).sum()
    }

    fn __repr__(&self) -> String {
        let s = self.plan.summary();
        format!(
            "Plan({:?} -> {:?}, {} pieces, {} network bytes)",
            self.plan.source, self.plan.destination, s.pieces, s.total_bytes
        )
    }
}
