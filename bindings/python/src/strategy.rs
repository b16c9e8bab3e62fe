//! `Strategy`, `Spec`, `load` and `derive`.

use std::collections::BTreeMap;
use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::PyDict;
use shardplan::derive::{DeriveRules, DeriveTarget, Fallback, derive_strategy};
use shardplan::spec::{Spec, rules_for};
use shardplan::{DType, Strategy, TensorInfo};

use crate::errors::{Class, Fault, Faulty, fault};
use crate::layout::{PyLayout, PyMesh, region_tuple};

/// A dtype by name: `bf16`, `f32`, ..., or as numpy and torch spell it
/// (`float32`, `torch.bfloat16`).
pub(crate) fn parse_dtype(text: &str) -> Faulty<DType> {
    let t = text.trim();
    let t = t
        .strip_prefix("torch.")
        .or_else(|| t.strip_prefix("numpy."))
        .unwrap_or(t);
    t.parse::<DType>().map_err(|e| {
        Fault::usage(
            format!("`{text}` is not a dtype: {e}"),
            "use one of f64, f32, f16, bf16, i64, i32, i16, i8, u64, u32, u16, u8, bool",
        )
    })
}

/// The names of `tensors`, in order.
fn names(tensors: &[TensorInfo]) -> Vec<String> {
    tensors.iter().map(|t| t.name.clone()).collect()
}

/// How every tensor of a model is laid out over one mesh.
#[pyclass(name = "Strategy", module = "shardplan", frozen, from_py_object)]
#[derive(Clone)]
pub(crate) struct PyStrategy {
    pub(crate) inner: Arc<Strategy>,
    /// The derivation rules of the spec it came from (layer pattern,
    /// optimizer shards), used by `derive`.
    pub(crate) rules: Option<DeriveRules>,
    /// Why each tensor got its layout, for a derived strategy.
    pub(crate) derivation: Option<String>,
}

impl PyStrategy {
    pub(crate) fn plain(s: Strategy) -> Self {
        PyStrategy {
            inner: Arc::new(s),
            rules: None,
            derivation: None,
        }
    }

    pub(crate) fn tensor_index(&self, name: &str) -> Faulty<usize> {
        self.inner
            .tensors()
            .iter()
            .position(|t| t.name == name)
            .ok_or_else(|| {
                Fault::usage(
                    format!("strategy `{}` has no tensor `{name}`", self.inner.name()),
                    "names are matched exactly; `strategy.tensors` lists them",
                )
            })
    }
}

#[pymethods]
impl PyStrategy {
    /// A strategy named `name` on `mesh` (or, with `None`, the mesh of the
    /// first layout), from `{tensor name: (Layout, dtype)}`.
    #[new]
    fn new(name: String, mesh: Option<PyMesh>, tensors: &Bound<'_, PyDict>) -> PyResult<Self> {
        let mut infos = Vec::with_capacity(tensors.len());
        let mut layouts = Vec::with_capacity(tensors.len());
        for (key, value) in tensors.iter() {
            let tensor: String = key.extract()?;
            let (layout, dtype): (PyLayout, String) = value.extract().map_err(|_| {
                PyErr::from(Fault::usage(
                    format!("tensor `{tensor}`: expected a (Layout, dtype) pair"),
                    "write {\"w\": (layout, \"bf16\")}",
                ))
            })?;
            infos.push(TensorInfo {
                name: tensor,
                shape: layout.inner.shape().to_vec(),
                dtype: parse_dtype(&dtype)?,
            });
            layouts.push(layout.inner);
        }
        let mesh = match (mesh, layouts.first()) {
            (Some(m), _) => m.inner,
            (None, Some(l)) => l.mesh().clone(),
            (None, None) => {
                return Err(Fault::usage(
                    format!("strategy `{name}` has neither a mesh nor a tensor"),
                    "pass the mesh",
                )
                .into());
            }
        };
        let s = Strategy::new(name, mesh, infos, layouts).map_err(fault)?;
        Ok(PyStrategy::plain(s))
    }

    /// The strategy's name.
    #[getter]
    fn name(&self) -> &str {
        self.inner.name()
    }

    /// The mesh.
    #[getter]
    fn mesh(&self) -> PyMesh {
        PyMesh {
            inner: self.inner.mesh().clone(),
        }
    }

    /// Tensor names, in order.
    #[getter]
    fn tensors(&self) -> Vec<String> {
        names(self.inner.tensors())
    }

    /// A tensor's global shape.
    fn shape(&self, tensor: &str) -> Faulty<Vec<u64>> {
        Ok(self.inner.tensors()[self.tensor_index(tensor)?]
            .shape
            .clone())
    }

    /// A tensor's dtype name (`bf16`, `f32`, ...).
    fn dtype(&self, tensor: &str) -> Faulty<&'static str> {
        Ok(self.inner.tensors()[self.tensor_index(tensor)?]
            .dtype
            .name())
    }

    /// A tensor's layout.
    fn layout(&self, tensor: &str) -> Faulty<PyLayout> {
        Ok(PyLayout {
            inner: self.inner.layouts()[self.tensor_index(tensor)?].clone(),
        })
    }

    /// The box of `tensor` that `rank` holds, as `(offset, extent)`, or
    /// `None` when it holds none.
    fn region(&self, tensor: &str, rank: u64) -> Faulty<Option<(Vec<u64>, Vec<u64>)>> {
        let n = self.inner.mesh().rank_count();
        if rank >= n {
            return Err(fault(shardplan::LayoutError::RankOutOfRange {
                rank,
                rank_count: n,
            }));
        }
        let l = &self.inner.layouts()[self.tensor_index(tensor)?];
        Ok(l.region_of(rank).as_ref().map(region_tuple))
    }

    /// For a derived strategy, why each tensor got its layout (a table);
    /// otherwise `None`.
    #[getter]
    fn derivation(&self) -> Option<&str> {
        self.derivation.as_deref()
    }

    /// The same strategy under another name.
    fn renamed(&self, name: &str) -> Self {
        PyStrategy {
            inner: Arc::new(self.inner.renamed(name)),
            ..self.clone()
        }
    }

    fn __len__(&self) -> usize {
        self.inner.tensors().len()
    }

    fn __contains__(&self, tensor: &str) -> bool {
        self.inner.tensor(tensor).is_some()
    }

    fn __repr__(&self) -> String {
        format!(
            "Strategy({:?}, {} tensors on {})",
            self.inner.name(),
            self.inner.tensors().len(),
            self.inner.mesh()
        )
    }
}

/// A checked spec: named meshes and strategies over one set of tensors.
#[pyclass(name = "Spec", module = "shardplan", frozen)]
pub(crate) struct PySpec {
    pub(crate) inner: Arc<Spec>,
    pub(crate) warnings: Vec<String>,
}

#[pymethods]
impl PySpec {
    /// The strategy called `name`.
    fn strategy(&self, name: &str) -> Faulty<PyStrategy> {
        let s = self.inner.strategy(name).ok_or_else(|| {
            Fault::usage(
                format!("the spec has no strategy `{name}`"),
                format!(
                    "its strategies are {}",
                    self.inner
                        .strategies()
                        .keys()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })?;
        Ok(PyStrategy {
            inner: Arc::new(s.clone()),
            rules: Some(rules_for(&self.inner, name)),
            derivation: None,
        })
    }

    /// Strategy names.
    #[getter]
    fn strategies(&self) -> Vec<String> {
        self.inner.strategies().keys().cloned().collect()
    }

    /// Mesh names with their meshes.
    #[getter]
    fn meshes(&self) -> BTreeMap<String, PyMesh> {
        self.inner
            .meshes()
            .iter()
            .map(|(n, m)| (n.clone(), PyMesh { inner: m.clone() }))
            .collect()
    }

    /// Tensor names, in the spec's order.
    #[getter]
    fn tensors(&self) -> Vec<String> {
        names(self.inner.tensors())
    }

    /// The transfer the spec names, as `(from, to)`, or `None`.
    #[getter]
    fn transfer(&self) -> Option<(String, String)> {
        self.inner
            .transfer()
            .map(|t| (t.from.clone(), t.to.clone()))
    }

    /// Warnings found while reading it, one line each.
    #[getter]
    fn warnings(&self) -> Vec<String> {
        self.warnings.clone()
    }

    /// The spec as YAML, with `comment` at the top.
    #[pyo3(signature = (comment = "written by shardplan"))]
    fn to_yaml(&self, comment: &str) -> PyResult<String> {
        self.inner
            .to_yaml(comment)
            .map_err(|e| Fault::of(Class::Spec, &e).into())
    }

    fn __repr__(&self) -> String {
        format!("Spec(strategies={:?})", self.strategies())
    }
}

/// Reads a spec: a YAML spec, or a MindSpore strategy file (JSON with
/// shapes, as one strategy named after the file).
#[pyfunction]
pub(crate) fn load(py: Python<'_>, path: std::path::PathBuf) -> Faulty<PySpec> {
    let (spec, warnings) = py
        .detach(|| shardplan::import::load(&path))
        .map_err(fault)?;
    Ok(PySpec {
        inner: Arc::new(spec),
        warnings: warnings.iter().map(|d| d.one_line()).collect(),
    })
}

/// Options of `derive` besides the target: each overrides the rule the
/// training strategy's spec gives.
#[derive(Default)]
pub(crate) struct RuleOptions {
    tp_axes: Option<Vec<String>>,
    dp_axes: Option<Vec<String>>,
    pp_axis: Option<String>,
    fallback: Option<String>,
    layer: Option<String>,
    replicate: Option<Vec<String>>,
}

fn rules(base: Option<DeriveRules>, o: RuleOptions) -> Faulty<DeriveRules> {
    let mut r = base.unwrap_or_default();
    if let Some(v) = o.tp_axes {
        r.tp_axes = v;
    }
    if let Some(v) = o.dp_axes {
        r.dp_axes = v;
    }
    if o.pp_axis.is_some() {
        r.pp_axis = o.pp_axis;
    }
    if let Some(f) = o.fallback {
        r.fallback = match f.as_str() {
            "replicate" => Fallback::Replicate,
            "chunk" => Fallback::Chunk,
            "error" => Fallback::Error,
            other => {
                return Err(Fault::usage(
                    format!("`{other}` is not a fallback"),
                    "use \"error\", \"replicate\" or \"chunk\"",
                ));
            }
        };
    }
    if o.layer.is_some() {
        r.layer = o.layer;
    }
    if let Some(v) = o.replicate {
        r.replicate = v;
    }
    Ok(r)
}

/// Derives an inference strategy from a training strategy: onto `target`
/// (a mesh), or onto `devices` ranks with tensor-parallel degree `tp` and
/// `pp` pipeline stages. MindSpore's `infer_predict_layout`, without a
/// network.
#[pyfunction]
#[pyo3(signature = (train, *, devices = None, tp = None, pp = 1, target = None,
    name = "infer".to_string(), tp_axes = None, dp_axes = None, pp_axis = None,
    fallback = None, layer = None, replicate = None))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn derive(
    py: Python<'_>,
    train: &PyStrategy,
    devices: Option<u64>,
    tp: Option<u64>,
    pp: u64,
    target: Option<PyMesh>,
    name: String,
    tp_axes: Option<Vec<String>>,
    dp_axes: Option<Vec<String>>,
    pp_axis: Option<String>,
    fallback: Option<String>,
    layer: Option<String>,
    replicate: Option<Vec<String>>,
) -> Faulty<PyStrategy> {
    let options = RuleOptions {
        tp_axes,
        dp_axes,
        pp_axis,
        fallback,
        layer,
        replicate,
    };
    let rules = self::rules(train.rules.clone(), options)?;
    let target = match (target, devices) {
        (Some(mesh), None) => DeriveTarget::from_mesh(mesh.inner, &rules).map_err(fault)?,
        (None, Some(devices)) => {
            DeriveTarget::from_degrees(devices, tp.unwrap_or(1), pp).map_err(fault)?
        }
        _ => {
            return Err(Fault::usage(
                "derive needs a target mesh or a device count, not both",
                "call derive(train, devices=2, tp=2, pp=1) or derive(train, target=mesh)",
            ));
        }
    };
    let src = train.inner.clone();
    let derived = py
        .detach(|| derive_strategy(&src, &target, &rules).and_then(|d| d.renamed(&name)))
        .map_err(fault)?;
    let derivation = derived.explain(src.name());
    Ok(PyStrategy {
        inner: Arc::new(derived.strategy),
        rules: None,
        derivation: Some(derivation),
    })
}

/// Reads MindSpore strategy files (one file, a merged file, or one per
/// stage) as a strategy. JSON files record shapes (every dtype is then
/// `dtype`); protobuf files do not, so shapes and dtypes come from
/// `tensors` (`{name: (shape, dtype)}`) or from the checkpoint the files
/// belong to (`checkpoint`, a folder of `rank_<r>/` folders).
#[pyfunction]
#[pyo3(signature = (files, *, checkpoint = None, tensors = None, name = None, dtype = "f32"))]
pub(crate) fn read_strategy(
    py: Python<'_>,
    files: Vec<std::path::PathBuf>,
    checkpoint: Option<std::path::PathBuf>,
    tensors: Option<BTreeMap<String, (Vec<u64>, String)>>,
    name: Option<String>,
    dtype: &str,
) -> Faulty<PyStrategy> {
    use shardplan::formats::mindspore::strategy::read_strategy_files;
    use shardplan::import::{ShapeSource, import_strategy};
    let dtype = parse_dtype(dtype)?;
    let name = name.unwrap_or_else(|| {
        files
            .first()
            .and_then(|f| f.file_stem())
            .map_or("imported".into(), |s| s.to_string_lossy().into_owned())
    });
    let given = tensors
        .map(|ts| {
            ts.into_iter()
                .map(|(name, (shape, dtype))| {
                    Ok(TensorInfo {
                        name,
                        shape,
                        dtype: parse_dtype(&dtype)?,
                    })
                })
                .collect::<Faulty<Vec<_>>>()
        })
        .transpose()?;
    let spec = py.detach(|| -> Faulty<Spec> {
        let refs: Vec<&std::path::Path> = files.iter().map(|p| p.as_path()).collect();
        match (&checkpoint, &given) {
            (Some(_), Some(_)) => Err(Fault::usage(
                "read_strategy takes the shapes from `checkpoint` or from `tensors`, not both",
                "pass one of them",
            )),
            (None, Some(ts)) => {
                import_strategy(&refs, ShapeSource::Tensors(ts), &name).map_err(fault)
            }
            (None, None) => {
                import_strategy(&refs, ShapeSource::Recorded(dtype), &name).map_err(fault)
            }
            (Some(dir), None) => {
                let file = read_strategy_files(&refs).map_err(fault)?;
                let tensors = shardplan::reshard::tensors_from_checkpoints(dir, Some(&file))
                    .map_err(fault)?;
                import_strategy(&refs, ShapeSource::Tensors(&tensors), &name).map_err(fault)
            }
        }
    })?;
    let strategy = spec.strategy(&name).expect("the import names its strategy");
    Ok(PyStrategy {
        inner: Arc::new(strategy.clone()),
        rules: Some(rules_for(&spec, &name)),
        derivation: None,
    })
}
