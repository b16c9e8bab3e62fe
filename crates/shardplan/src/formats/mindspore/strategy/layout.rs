//! A strategy file's entries as layouts: per parameter and stage, and the
//! whole file as a core `Strategy` (`to_strategy`).

use super::*;

impl ParamEntry {
    /// The entry once per stage it is on, each on that stage alone.
    pub(super) fn per_stage(&self) -> impl Iterator<Item = ParamEntry> + '_ {
        std::iter::once(self.stage)
            .chain(self.also_on.iter().copied())
            .map(|stage| ParamEntry {
                stage,
                also_on: Vec::new(),
                ..self.clone()
            })
    }

    /// The tensor map per dimension, resolved against a tensor of `rank`
    /// dimensions. A single stored map is flat (an entry per dimension), as
    /// MindSpore reads it; several are nested (one per dimension), where
    /// the empty entries are dropped: MindSpore's writer pads the nested map
    /// of a 1-D tensor with an empty one so that it is not read as flat.
    fn tensor_map_for(&self, rank: usize) -> Option<Vec<Vec<i64>>> {
        match self.tensor_map.as_slice() {
            [flat] => (flat.len() == rank).then(|| flat.iter().map(|&k| vec![k]).collect()),
            nested => {
                let per_dim: Vec<Vec<i64>> =
                    nested.iter().filter(|e| !e.is_empty()).cloned().collect();
                (per_dim.len() == rank).then_some(per_dim)
            }
        }
    }

    /// This entry in MindSpore's notation, for a tensor of `rank`
    /// dimensions on a strategy of `stage_count` stages.
    ///
    /// # Errors
    ///
    /// [`StrategyLayoutError::TensorMapRank`] when the tensor map does not
    /// fit that many dimensions.
    pub fn mindspore_layout(
        &self,
        rank: usize,
        stage_count: u64,
    ) -> Result<MindSporeLayout, StrategyLayoutError> {
        let tensor_map =
            self.tensor_map_for(rank)
                .ok_or_else(|| StrategyLayoutError::TensorMapRank {
                    parameter: self.name.clone(),
                    tensor_map: self.tensor_map.clone(),
                    rank,
                })?;
        Ok(MindSporeLayout {
            dev_matrix: self.dev_matrix.clone(),
            tensor_map,
            opt_weight_shard_size: self.opt_weight_shard_size,
            opt_weight_shard_step: self.opt_weight_shard_step,
            param_split_shape: self.param_split_shape.clone(),
            stage: self.stage,
            stage_count,
        })
    }

    /// The layout of this parameter for a tensor of `shape` on a strategy of
    /// `stage_count` stages.
    ///
    /// # Errors
    ///
    /// [`StrategyLayoutError::TensorMapShape`] when the tensor map does not
    /// fit the shape, [`StrategyLayoutError::Layout`] when the entry does
    /// not make a layout of it.
    pub fn layout(
        &self,
        shape: &[u64],
        stage_count: u64,
    ) -> Result<TensorLayout, StrategyLayoutError> {
        let ms = self
            .mindspore_layout(shape.len(), stage_count)
            .map_err(|_| StrategyLayoutError::TensorMapShape {
                parameter: self.name.clone(),
                tensor_map: self.tensor_map.clone(),
                shape: shape.to_vec(),
            })?;
        ms.to_layout_on_stages(shape, &self.also_on)
            .map_err(|source| StrategyLayoutError::Layout {
                parameter: self.name.clone(),
                source,
            })
    }

    /// Devices of one stage this entry spans (its device matrix's product).
    fn stage_devices(&self) -> Result<u64, StrategyLayoutError> {
        self.dev_matrix
            .iter()
            .try_fold(1u64, |a, &b| a.checked_mul(b))
            .ok_or_else(|| StrategyLayoutError::DevMatrixOverflow {
                parameter: self.name.clone(),
                dev_matrix: self.dev_matrix.clone(),
            })
    }
}

impl StrategyFile {
    /// Devices of one stage (the device matrices' product).
    ///
    /// # Errors
    ///
    /// [`StrategyLayoutError::DevMatrixOverflow`] when a product
    /// overflows, [`StrategyLayoutError::StageDevices`] when parameters
    /// disagree.
    pub fn stage_devices(&self) -> Result<u64, StrategyLayoutError> {
        let mut n: Option<u64> = None;
        for p in &self.params {
            let devices = p.stage_devices()?;
            match n {
                Some(others) if others != devices => {
                    return Err(StrategyLayoutError::StageDevices {
                        parameter: p.name.clone(),
                        devices,
                        others,
                    });
                }
                _ => n = Some(devices),
            }
        }
        Ok(n.unwrap_or(1))
    }

    /// The mesh of these files: `[rank = n]`, or `[stage = S, rank = n]`
    /// with pipeline stages.
    fn mesh(&self) -> Result<Arc<DeviceMesh>, StrategyLayoutError> {
        let n = self.stage_devices()?;
        let axes: Vec<(&str, u64)> = if self.stage_count > 1 {
            vec![(STAGE_AXIS, self.stage_count), ("rank", n)]
        } else {
            vec![("rank", n)]
        };
        DeviceMesh::new(axes)
            .map(Arc::new)
            .map_err(StrategyLayoutError::Mesh)
    }

    /// The layout of tensor `t` on `mesh`: its entry's, or whole on every
    /// rank when the files do not name it.
    fn layout_of(
        &self,
        entry: Option<&ParamEntry>,
        t: &TensorInfo,
        mesh: &Arc<DeviceMesh>,
    ) -> Result<TensorLayout, StrategyLayoutError> {
        let Some(p) = entry else {
            return TensorLayout::replicated(mesh.clone(), &t.shape).map_err(|source| {
                StrategyLayoutError::Replicated {
                    tensor: t.name.clone(),
                    source,
                }
            });
        };
        if let Some(s) = p.shape.as_ref().filter(|s| **s != t.shape) {
            return Err(StrategyLayoutError::ShapeMismatch {
                parameter: t.name.clone(),
                in_strategy: s.clone(),
                given: t.shape.clone(),
            });
        }
        p.layout(&t.shape, self.stage_count)
    }

    /// The strategy these files describe, for the tensors in `tensors`
    /// (shapes and dtypes come from there, e.g. from a checkpoint or a
    /// spec). A tensor the files do not lay out is held whole by every rank,
    /// as MindSpore does with parameters missing from a strategy.
    ///
    /// The mesh is `[rank = n]`, or `[stage = S, rank = n]` with pipeline
    /// stages.
    ///
    /// # Errors
    ///
    /// A [`StrategyLayoutError`], naming the parameter when a layout does
    /// not fit.
    pub fn to_strategy(
        &self,
        name: &str,
        tensors: &[TensorInfo],
    ) -> Result<Strategy, StrategyLayoutError> {
        let mesh = self.mesh()?;
        let by_name: BTreeMap<&str, &ParamEntry> =
            self.params.iter().map(|p| (p.name.as_str(), p)).collect();
        let layouts = tensors
            .iter()
            .map(|t| self.layout_of(by_name.get(t.name.as_str()).copied(), t, &mesh))
            .collect::<Result<Vec<_>, _>>()?;
        Strategy::new(name, mesh, tensors.to_vec(), layouts).map_err(StrategyLayoutError::Strategy)
    }

    /// Tensors with the shapes the files record (JSON only), in file order.
    ///
    /// # Errors
    ///
    /// The name of the first parameter without a recorded shape.
    pub fn tensors(&self, dtype: DType) -> Result<Vec<TensorInfo>, String> {
        self.params
            .iter()
            .map(|p| {
                let shape = p.shape.clone().ok_or_else(|| p.name.clone())?;
                Ok(TensorInfo {
                    name: p.name.clone(),
                    shape,
                    dtype,
                })
            })
            .collect()
    }
}
