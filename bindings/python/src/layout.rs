//! `DeviceMesh` and `Layout`: meshes and tensor layouts, built in any of
//! the three notations and read back in each.

use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyList, PyString, PyTuple};
use shardplan::notation::dtensor::{self, Placement};
use shardplan::notation::jax::PartitionSpec;
use shardplan::notation::mindspore::MindSporeLayout;
use shardplan::{DeviceMesh, Region, TensorLayout};

use crate::errors::{Fault, Faulty, fault};

/// A device mesh: named axes, outermost first; rank `r`'s coordinates are
/// `r` in mixed radix over the axis sizes.
#[pyclass(name = "DeviceMesh", module = "shardplan", frozen, eq, from_py_object)]
#[derive(Clone)]
pub(crate) struct PyMesh {
    pub(crate) inner: Arc<DeviceMesh>,
}

impl PartialEq for PyMesh {
    fn eq(&self, other: &Self) -> bool {
        *self.inner == *other.inner
    }
}

#[pymethods]
impl PyMesh {
    #[new]
    #[pyo3(signature = (shape, axes, device_ids = None))]
    fn new(shape: Vec<u64>, axes: Vec<String>, device_ids: Option<Vec<u64>>) -> Faulty<Self> {
        if shape.len() != axes.len() {
            return Err(Fault::usage(
                format!("{} sizes for {} axis names", shape.len(), axes.len()),
                "give one size per axis, e.g. DeviceMesh(shape=[2, 4], axes=[\"dp\", \"tp\"])",
            ));
        }
        let mut mesh = DeviceMesh::new(axes.into_iter().zip(shape)).map_err(fault)?;
        if let Some(ids) = device_ids {
            mesh = mesh.with_device_ids(ids).map_err(fault)?;
        }
        Ok(PyMesh {
            inner: Arc::new(mesh),
        })
    }

    /// Axis sizes, outermost first.
    #[getter]
    fn shape(&self) -> Vec<u64> {
        self.inner.shape()
    }

    /// Axis names, outermost first.
    #[getter]
    fn axes(&self) -> Vec<String> {
        self.inner.axes().iter().map(|a| a.name.clone()).collect()
    }

    /// Number of ranks.
    #[getter]
    fn size(&self) -> u64 {
        self.inner.rank_count()
    }

    /// The device each rank runs on, when given.
    #[getter]
    fn device_ids(&self) -> Option<Vec<u64>> {
        self.inner.device_ids().map(<[u64]>::to_vec)
    }

    /// The coordinates of `rank`, one per axis.
    fn coords(&self, rank: u64) -> Faulty<Vec<u64>> {
        self.inner.coords(rank).map_err(fault)
    }

    /// The rank at `coords`.
    fn rank_of(&self, coords: Vec<u64>) -> Faulty<u64> {
        self.inner.rank_of(&coords).map_err(fault)
    }

    fn __len__(&self) -> usize {
        usize::try_from(self.inner.rank_count()).unwrap_or(usize::MAX)
    }

    fn __repr__(&self) -> String {
        format!(
            "DeviceMesh(shape={:?}, axes={:?})",
            self.inner.shape(),
            self.axes()
        )
    }

    fn __str__(&self) -> String {
        self.inner.to_string()
    }
}

/// A box of a tensor: `offset` and `extent` per dimension.
pub(crate) fn region_tuple(r: &Region) -> (Vec<u64>, Vec<u64>) {
    (r.offset().to_vec(), r.extent().to_vec())
}

/// How one tensor is laid out over a mesh: which block of it each rank
/// holds.
#[pyclass(name = "Layout", module = "shardplan", frozen, from_py_object)]
#[derive(Clone)]
pub(crate) struct PyLayout {
    pub(crate) inner: TensorLayout,
}

/// Placements given as strings or as DTensor placement objects (whose
/// `str()` is `Shard(dim=0)`, `Replicate()`, `Partial(sum)`).
fn placements(items: &Bound<'_, PyAny>) -> PyResult<Vec<Placement>> {
    let mut out = Vec::new();
    for item in items.try_iter()? {
        let text = item?.str()?.to_string();
        out.push(text.parse::<Placement>().map_err(fault)?);
    }
    Ok(out)
}

/// A `PartitionSpec` given as text (`"P('tp', None)"`), or as a sequence
/// of entries (`None`, an axis name, a tuple of names), as JAX's own
/// `PartitionSpec` is.
fn partition_spec(spec: &Bound<'_, PyAny>) -> PyResult<PartitionSpec> {
    if let Ok(text) = spec.cast::<PyString>() {
        return Ok(text.to_cow()?.parse::<PartitionSpec>().map_err(fault)?);
    }
    let mut dims = Vec::new();
    for entry in spec.try_iter()? {
        let entry = entry?;
        if entry.is_none() {
            dims.push(Vec::new());
        } else if let Ok(name) = entry.extract::<String>() {
            dims.push(vec![name]);
        } else if entry.is_instance_of::<PyTuple>() || entry.is_instance_of::<PyList>() {
            dims.push(entry.extract::<Vec<String>>()?);
        } else {
            return Err(Fault::usage(
                format!("`{}` is not a PartitionSpec entry", entry.repr()?),
                "each entry is None, an axis name or a tuple of axis names",
            )
            .into());
        }
    }
    Ok(PartitionSpec { dims })
}

#[pymethods]
impl PyLayout {
    /// Every rank holds the whole tensor.
    #[staticmethod]
    fn replicated(mesh: &PyMesh, shape: Vec<u64>) -> Faulty<Self> {
        let inner = TensorLayout::replicated(mesh.inner.clone(), &shape).map_err(fault)?;
        Ok(PyLayout { inner })
    }

    /// A layout given box by box: `{rank: (offset, extent)}`, ranks with the
    /// same box holding replicas, ranks left out holding nothing (a DCP
    /// checkpoint's chunks, irregular shards).
    #[staticmethod]
    fn from_boxes(
        mesh: &PyMesh,
        shape: Vec<u64>,
        boxes: std::collections::BTreeMap<u64, (Vec<u64>, Vec<u64>)>,
    ) -> PyResult<Self> {
        let mut regions = Vec::with_capacity(boxes.len());
        for (rank, (offset, extent)) in boxes {
            let region = Region::try_new(offset, extent).ok_or_else(|| {
                Fault::usage(
                    format!("the box of rank {rank} has offsets and extents of different lengths, or ends past 2**64"),
                    "give each box (offset, extent) with one entry per tensor dimension",
                )
            })?;
            regions.push((rank, region));
        }
        let inner = TensorLayout::from_boxes(mesh.inner.clone(), &shape, regions).map_err(fault)?;
        Ok(PyLayout { inner })
    }

    /// A layout from PyTorch DTensor placements, one per mesh axis.
    #[staticmethod]
    fn from_placements(
        mesh: &PyMesh,
        shape: Vec<u64>,
        placements: &Bound<'_, PyAny>,
    ) -> PyResult<Self> {
        let ps = self::placements(placements)?;
        let inner = dtensor::to_layout(mesh.inner.clone(), &shape, &ps).map_err(fault)?;
        Ok(PyLayout { inner })
    }

    /// A layout from a JAX `PartitionSpec`.
    #[staticmethod]
    fn from_partition_spec(
        mesh: &PyMesh,
        shape: Vec<u64>,
        spec: &Bound<'_, PyAny>,
    ) -> PyResult<Self> {
        let spec = partition_spec(spec)?;
        let inner = spec.to_layout(mesh.inner.clone(), &shape).map_err(fault)?;
        Ok(PyLayout { inner })
    }

    /// A layout from MindSpore's `dev_matrix`, `tensor_map` and optimizer
    /// shard, as its strategy files record them.
    #[staticmethod]
    #[pyo3(signature = (shape, dev_matrix, tensor_map, opt_weight_shard_size = 0,
        opt_weight_shard_step = None, param_split_shape = None, stage = 0, stage_count = 1))]
    #[allow(clippy::too_many_arguments)]
    fn from_mindspore(
        shape: Vec<u64>,
        dev_matrix: Vec<u64>,
        tensor_map: &Bound<'_, PyAny>,
        opt_weight_shard_size: i64,
        opt_weight_shard_step: Option<i64>,
        param_split_shape: Option<Vec<u64>>,
        stage: u64,
        stage_count: u64,
    ) -> PyResult<Self> {
        let mut tm = Vec::new();
        for entry in tensor_map.try_iter()? {
            let entry = entry?;
            match entry.extract::<i64>() {
                Ok(k) => tm.push(vec![k]),
                Err(_) => tm.push(entry.extract::<Vec<i64>>()?),
            }
        }
        let mut ms = MindSporeLayout {
            dev_matrix,
            tensor_map: tm,
            opt_weight_shard_size,
            opt_weight_shard_step: 0,
            param_split_shape: param_split_shape.unwrap_or_default(),
            stage,
            stage_count,
        };
        // Without a step: the one MindSpore records for this group.
        ms.opt_weight_shard_step = match opt_weight_shard_step {
            Some(step) => step,
            None => ms.recorded_step().map_err(fault)?,
        };
        let inner = ms.to_layout(&shape).map_err(fault)?;
        Ok(PyLayout { inner })
    }

    /// The tensor's global shape.
    #[getter]
    fn shape(&self) -> Vec<u64> {
        self.inner.shape().to_vec()
    }

    /// The mesh.
    #[getter]
    fn mesh(&self) -> PyMesh {
        PyMesh {
            inner: self.inner.mesh().clone(),
        }
    }

    /// Ranks holding each block.
    #[getter]
    fn replica_count(&self) -> u64 {
        self.inner.replica_count()
    }

    /// The box rank `rank` holds, as `(offset, extent)`, or `None`.
    fn region(&self, rank: u64) -> Faulty<Option<(Vec<u64>, Vec<u64>)>> {
        let n = self.inner.mesh().rank_count();
        if rank >= n {
            return Err(fault(shardplan::LayoutError::RankOutOfRange {
                rank,
                rank_count: n,
            }));
        }
        Ok(self.inner.region_of(rank).as_ref().map(region_tuple))
    }

    /// The ranks holding element `index`.
    fn holders(&self, index: Vec<u64>) -> Faulty<Vec<u64>> {
        self.inner.holders(&index).map_err(fault)
    }

    /// Every distinct block with the ranks holding it:
    /// `[((offset, extent), [ranks])]`.
    #[allow(clippy::type_complexity)]
    fn shards(&self) -> Vec<((Vec<u64>, Vec<u64>), Vec<u64>)> {
        self.inner
            .shards()
            .iter()
            .map(|(r, ranks)| (region_tuple(r), ranks.clone()))
            .collect()
    }

    /// The layout as DTensor placements (strings).
    fn to_placements(&self) -> Faulty<Vec<String>> {
        let ps = dtensor::from_layout(&self.inner).map_err(fault)?;
        Ok(ps.iter().map(ToString::to_string).collect())
    }

    /// The layout as a JAX `PartitionSpec` (text).
    fn to_partition_spec(&self) -> Faulty<String> {
        Ok(PartitionSpec::from_layout(&self.inner)
            .map_err(fault)?
            .to_string())
    }

    /// The layout in MindSpore's terms: a dict of `dev_matrix`,
    /// `tensor_map`, `opt_weight_shard_size`, `opt_weight_shard_step`.
    fn to_mindspore<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, pyo3::types::PyDict>> {
        let ms = MindSporeLayout::from_layout(&self.inner).map_err(fault)?;
        let d = pyo3::types::PyDict::new(py);
        d.set_item("dev_matrix", &ms.dev_matrix)?;
        d.set_item("tensor_map", &ms.tensor_map)?;
        d.set_item("opt_weight_shard_size", ms.opt_weight_shard_size)?;
        d.set_item("opt_weight_shard_step", ms.opt_weight_shard_step)?;
        Ok(d)
    }

    /// True when both layouts put the same block on every rank.
    fn same_placement(&self, other: &PyLayout) -> bool {
        self.inner.same_placement(&other.inner)
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other
            .cast::<PyLayout>()
            .is_ok_and(|o| o.get().inner == self.inner)
    }

    fn __repr__(&self) -> String {
        format!(
            "Layout({} of shape {:?} on {})",
            self.inner,
            self.inner.shape(),
            self.inner.mesh()
        )
    }

    fn __str__(&self) -> String {
        self.inner.to_string()
    }
}
