//! A strategy: one layout for every tensor of a model.

use std::collections::HashMap;
use std::sync::Arc;

use crate::dtype::DType;
use crate::error::LayoutError;
use crate::geometry::element_count;
use crate::layout::TensorLayout;
use crate::mesh::DeviceMesh;

/// A tensor of the model: name, global shape and element type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Unique name, e.g. `model.layers.0.self_attn.q_proj.weight`.
    pub name: String,
    /// Global shape.
    pub shape: Vec<u64>,
    /// Element type.
    pub dtype: DType,
}

impl TensorInfo {
    /// Bytes of the whole tensor.
    ///
    /// # Errors
    ///
    /// [`LayoutError::ShapeOverflow`] when the size overflows.
    pub fn size_bytes(&self) -> Result<u64, LayoutError> {
        element_count(&self.shape)?
            .checked_mul(self.dtype.size_bytes())
            .ok_or_else(|| LayoutError::ShapeOverflow {
                shape: self.shape.clone(),
                max: crate::geometry::MAX_ELEMENTS,
            })
    }
}

/// Errors of [`Strategy::new`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum StrategyError {
    /// Not one layout per tensor.
    #[error("strategy `{strategy}` has {layouts} layouts for {tensors} tensors")]
    #[diagnostic(code(shardplan::strategy::layout_count))]
    LayoutCount {
        /// Strategy name.
        strategy: String,
        /// Layouts given.
        layouts: usize,
        /// Tensors.
        tensors: usize,
    },
    /// A layout for another shape.
    #[error(
        "strategy `{strategy}`: the layout of tensor `{tensor}` has shape {layout:?}, the tensor {tensor_shape:?}"
    )]
    #[diagnostic(code(shardplan::strategy::shape_mismatch))]
    ShapeMismatch {
        /// Strategy name.
        strategy: String,
        /// Tensor name.
        tensor: String,
        /// Shape of the layout.
        layout: Vec<u64>,
        /// Shape of the tensor.
        tensor_shape: Vec<u64>,
    },
    /// A layout whose mesh has another rank count than the strategy's.
    #[error(
        "strategy `{strategy}`: the layout of tensor `{tensor}` spans {layout} ranks, the strategy's mesh {mesh}"
    )]
    #[diagnostic(code(shardplan::strategy::rank_count))]
    RankCount {
        /// Strategy name.
        strategy: String,
        /// Tensor name.
        tensor: String,
        /// Ranks of the layout's mesh.
        layout: u64,
        /// Ranks of the strategy's mesh.
        mesh: u64,
    },
    /// Two tensors with one name.
    #[error("tensor `{0}` is listed twice")]
    #[diagnostic(code(shardplan::strategy::duplicate_tensor))]
    DuplicateTensor(String),
}

/// One layout for every tensor, on one device mesh.
///
/// A layout may sit on a mesh of its own (a MindSpore parameter carries its
/// own device matrix) as long as it spans the same ranks; rank `r` is the
/// same process in all of them.
///
/// # Example
///
/// ```
/// use std::sync::Arc;
/// use shardplan_core::{DType, DeviceMesh, Strategy, TensorInfo, TensorLayout};
///
/// let mesh = Arc::new(DeviceMesh::new([("tp", 2)]).unwrap());
/// let t = TensorInfo { name: "w".into(), shape: vec![4, 4], dtype: DType::F32 };
/// let l = TensorLayout::replicated(mesh.clone(), &t.shape).unwrap();
/// let s = Strategy::new("infer", mesh.clone(), vec![t.clone()], vec![l.clone()]).unwrap();
/// assert_eq!(s.layout("w").unwrap().to_string(), "[-, -]");
/// assert!(Strategy::new("x", mesh, vec![t.clone(), t], vec![l.clone(), l]).is_err());
/// ```
#[derive(Debug, Clone)]
pub struct Strategy {
    name: String,
    mesh: Arc<DeviceMesh>,
    tensors: Vec<TensorInfo>,
    layouts: Vec<TensorLayout>,
    index: HashMap<String, usize>,
}

impl Strategy {
    /// A strategy from parallel lists of tensors and their layouts.
    ///
    /// # Errors
    ///
    /// [`StrategyError`] when the lists differ in length, a tensor name
    /// repeats, or a layout's shape or rank count does not match.
    pub fn new(
        name: impl Into<String>,
        mesh: Arc<DeviceMesh>,
        tensors: Vec<TensorInfo>,
        layouts: Vec<TensorLayout>,
    ) -> Result<Self, StrategyError> {
        let name = name.into();
        if tensors.len() != layouts.len() {
            return Err(StrategyError::LayoutCount {
                strategy: name,
                layouts: layouts.len(),
                tensors: tensors.len(),
            });
        }
        let mut index = HashMap::with_capacity(tensors.len());
        for (i, (t, l)) in tensors.iter().zip(&layouts).enumerate() {
            if index.insert(t.name.clone(), i).is_some() {
                return Err(StrategyError::DuplicateTensor(t.name.clone()));
            }
            if l.shape() != t.shape.as_slice() {
                return Err(StrategyError::ShapeMismatch {
                    strategy: name,
                    tensor: t.name.clone(),
                    layout: l.shape().to_vec(),
                    tensor_shape: t.shape.clone(),
                });
            }
            if l.mesh().rank_count() != mesh.rank_count() {
                return Err(StrategyError::RankCount {
                    strategy: name,
                    tensor: t.name.clone(),
                    layout: l.mesh().rank_count(),
                    mesh: mesh.rank_count(),
                });
            }
        }
        Ok(Strategy {
            name,
            mesh,
            tensors,
            layouts,
            index,
        })
    }

    /// The same strategy under another name. The parts were checked when
    /// the strategy was built, so nothing can fail.
    pub fn renamed(&self, name: impl Into<String>) -> Strategy {
        Strategy {
            name: name.into(),
            ..self.clone()
        }
    }

    /// Name of the strategy.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The mesh whose ranks the strategy spans.
    pub fn mesh(&self) -> &Arc<DeviceMesh> {
        &self.mesh
    }

    /// The tensors, in declaration order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The layouts, parallel to [`Strategy::tensors`].
    pub fn layouts(&self) -> &[TensorLayout] {
        &self.layouts
    }

    /// The layout of tensor `name`.
    pub fn layout(&self, name: &str) -> Option<&TensorLayout> {
        self.index.get(name).map(|&i| &self.layouts[i])
    }

    /// The tensor called `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }
}
