//! Merging stages into one file and writing strategy files, JSON or
//! protobuf.

use super::*;

impl StrategyFile {
    /// The parameters as one merged file (names prefixed `"<stage>-"`), the
    /// counterpart of MindSpore's `merge_pipeline_strategys`. Works on the
    /// entries as read, so protobuf files without shapes merge too.
    ///
    /// # Errors
    ///
    /// [`StrategyFileError`] naming `merged strategy`:
    /// [`MergeNestedMap`](StrategyFileFault::MergeNestedMap) for a nested
    /// tensor map in JSON, [`MergeOutOfRange`](StrategyFileFault::MergeOutOfRange)
    /// for a value that does not fit protobuf's integer fields.
    pub fn write_merged(&self, format: StrategyFormat) -> Result<Vec<u8>, StrategyFileError> {
        let what = "merged strategy";
        let current = self.stage_count.max(1) - 1;
        let name = |p: &ParamEntry| format!("{}-{}", p.stage, p.name);
        // One entry per stage of a parameter on several.
        let per_stage: Vec<ParamEntry> =
            self.params.iter().flat_map(ParamEntry::per_stage).collect();
        match format {
            StrategyFormat::Json => {
                let mut items = serde_json::Map::new();
                for p in &per_stage {
                    let [flat] = p.tensor_map.as_slice() else {
                        return Err(StrategyFileFault::MergeNestedMap {
                            parameter: p.name.clone(),
                        }
                        .of(what));
                    };
                    let l = JsonLayout {
                        dev_matrix: p.dev_matrix.clone(),
                        tensor_map: flat.iter().map(|&k| serde_json::Value::from(k)).collect(),
                        tensor_shape: p.shape.clone(),
                        field: 0,
                        opt_weight_shard_step: p.opt_weight_shard_step,
                        opt_weight_shard_size: p.opt_weight_shard_size,
                        param_split_shape: p.param_split_shape.clone(),
                        indices_offset: Vec::new(),
                    };
                    items.insert(name(p), serde_json::to_value(l).expect("serializes"));
                }
                let doc = JsonFile {
                    current_stage: current,
                    parallel_strategy_item: serde_json::Map::new(),
                    parallel_layout_item: items,
                };
                Ok(serde_json::to_vec(&doc).expect("serializes"))
            }
            StrategyFormat::Protobuf => {
                let int = |v: i64, p: &ParamEntry| {
                    i32::try_from(v).map_err(|_| {
                        StrategyFileFault::MergeOutOfRange {
                            parameter: p.name.clone(),
                            value: v,
                        }
                        .of(what)
                    })
                };
                let mut items = Vec::new();
                for p in &per_stage {
                    items.push(pb::ParallelLayoutItem {
                        param_name: name(p),
                        parallel_layouts: pb::ParallelLayouts {
                            dev_matrix: vec![pb::DevMatrix {
                                dim: p
                                    .dev_matrix
                                    .iter()
                                    .map(|&d| u32::try_from(d).unwrap_or(u32::MAX))
                                    .collect(),
                            }],
                            tensor_map: p
                                .tensor_map
                                .iter()
                                .map(|e| {
                                    Ok(pb::TensorMap {
                                        dim: e
                                            .iter()
                                            .map(|&k| int(k, p))
                                            .collect::<Result<_, _>>()?,
                                    })
                                })
                                .collect::<Result<_, StrategyFileError>>()?,
                            param_split_shape: vec![pb::ParamSplitShape {
                                dim: p.param_split_shape.iter().map(|&x| x as i64).collect(),
                            }],
                            indices_offset: vec![pb::IndicesOffset { dim: Vec::new() }],
                            field: 0,
                            opt_weight_shard_step: int(p.opt_weight_shard_step, p)?,
                            opt_weight_shard_size: int(p.opt_weight_shard_size, p)?,
                        },
                    });
                }
                let map = pb::ParallelStrategyMap {
                    current_stage: u32::try_from(current).unwrap_or(u32::MAX),
                    parallel_strategy_item: Vec::new(),
                    parallel_layout_item: items,
                };
                Ok(map.encode_to_vec())
            }
        }
    }
}

/// Output form of [`write_strategy_file`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StrategyFormat {
    /// JSON, as MindSpore's C++ writer produces (flat tensor maps only).
    Json,
    /// Protobuf `ParallelStrategyMap`.
    Protobuf,
}

/// Writes `strategy` as one MindSpore strategy file. With several pipeline
/// stages, the merged form is written (names prefixed `"<stage>-"`), as
/// `merge_pipeline_strategys` does; also when every name already looks
/// like `"<digits>-<rest>"`, which [`parse_strategy_file`] would otherwise
/// take for the merged form.
///
/// # Errors
///
/// [`StrategyFileError`] naming ``strategy `name` ``:
/// [`Inexpressible`](StrategyFileFault::Inexpressible) for a layout
/// MindSpore cannot express (partial sums, pins other than a first-axis
/// stage, uneven splits other than `param_split_shape`);
/// [`SplitOverAxes`](StrategyFileFault::SplitOverAxes) for a nested tensor
/// map in JSON; [`OutOfRange`](StrategyFileFault::OutOfRange) and
/// [`DeviceMatrixEntry`](StrategyFileFault::DeviceMatrixEntry) for a value
/// that does not fit protobuf's integer fields.
pub fn write_strategy_file(
    strategy: &Strategy,
    format: StrategyFormat,
) -> Result<Vec<u8>, StrategyFileError> {
    let what = format!("strategy `{}`", strategy.name());
    let entries = stage_entries(strategy, &what)?;
    // Names that all look stage-prefixed would be read as the merged form
    // and lose their first part, so they are written prefixed too.
    let merged = entries.iter().any(|(_, ms)| ms.stage_count > 1)
        || (!entries.is_empty() && entries.iter().all(|(t, _)| stage_prefix(&t.name).is_some()));
    let named: Vec<(String, &TensorInfo, &MindSporeLayout)> = entries
        .iter()
        .map(|(t, ms)| {
            let name = if merged {
                format!("{}-{}", ms.stage, t.name)
            } else {
                t.name.clone()
            };
            (name, *t, ms)
        })
        .collect();
    // The last stage's index, as merge_pipeline_strategys writes it; it
    // also carries the stage count when the last stage holds no parameter.
    let current = entries
        .iter()
        .map(|(_, ms)| ms.stage_count)
        .max()
        .unwrap_or(1)
        - 1;
    match format {
        StrategyFormat::Json => json_strategy(&named, current, &what),
        StrategyFormat::Protobuf => {
            let items = named
                .iter()
                .map(|(name, t, ms)| protobuf_item(name, t, ms, &what))
                .collect::<Result<Vec<_>, _>>()?;
            let map = pb::ParallelStrategyMap {
                current_stage: u32::try_from(current).unwrap_or(u32::MAX),
                parallel_strategy_item: Vec::new(),
                parallel_layout_item: items,
            };
            Ok(map.encode_to_vec())
        }
    }
}

/// Each tensor of `strategy` in MindSpore's notation, once per stage it
/// is on.
pub(super) fn stage_entries<'s>(
    strategy: &'s Strategy,
    what: &str,
) -> Result<Vec<(&'s TensorInfo, MindSporeLayout)>, StrategyFileError> {
    let mut entries = Vec::new();
    let staged = strategy
        .layouts()
        .iter()
        .any(|l| l.pinned_coords(0).next().is_some());
    for (t, l) in strategy.tensors().iter().zip(strategy.layouts()) {
        // A tensor on several stages is one entry per stage; one on every
        // stage has no stage pin left, and is one entry per stage too. The
        // first axis is the stage axis when some tensor is pinned on it.
        let on_every_stage = staged && l.pinned_coords(0).next().is_none();
        let per_stage = if on_every_stage {
            l.pinned_each(0)
        } else {
            l.split_pins()
        };
        for one in per_stage {
            let ms = MindSporeLayout::from_layout(&one).map_err(|source| {
                StrategyFileFault::Inexpressible {
                    tensor: t.name.clone(),
                    source: Box::new(source),
                }
                .of(what)
            })?;
            entries.push((t, ms));
        }
    }
    Ok(entries)
}

/// The entries as a JSON strategy file (flat tensor maps only).
pub(super) fn json_strategy(
    named: &[(String, &TensorInfo, &MindSporeLayout)],
    current: u64,
    what: &str,
) -> Result<Vec<u8>, StrategyFileError> {
    let mut items = serde_json::Map::new();
    for (name, t, ms) in named {
        if !ms.is_flat() {
            return Err(StrategyFileFault::SplitOverAxes {
                tensor: t.name.clone(),
            }
            .of(what));
        }
        let l = JsonLayout {
            dev_matrix: ms.dev_matrix.clone(),
            tensor_map: ms
                .tensor_map
                .iter()
                .map(|e| serde_json::Value::from(e[0]))
                .collect(),
            tensor_shape: Some(t.shape.clone()),
            field: 0,
            opt_weight_shard_step: ms.opt_weight_shard_step,
            opt_weight_shard_size: ms.opt_weight_shard_size,
            param_split_shape: ms.param_split_shape.clone(),
            indices_offset: Vec::new(),
        };
        items.insert(name.clone(), serde_json::to_value(l).expect("serializes"));
    }
    let doc = JsonFile {
        current_stage: current,
        parallel_strategy_item: serde_json::Map::new(),
        parallel_layout_item: items,
    };
    Ok(serde_json::to_vec(&doc).expect("serializes"))
}

/// One entry as a protobuf layout item, its values checked against the
/// protobuf fields' integer types.
pub(super) fn protobuf_item(
    name: &str,
    t: &TensorInfo,
    ms: &MindSporeLayout,
    what: &str,
) -> Result<pb::ParallelLayoutItem, StrategyFileError> {
    let to_i32 = |v: i64, field: &'static str| {
        i32::try_from(v).map_err(|_| {
            StrategyFileFault::OutOfRange {
                tensor: t.name.clone(),
                field,
                value: v,
            }
            .of(what)
        })
    };
    let dev = ms
        .dev_matrix
        .iter()
        .map(|&d| {
            u32::try_from(d).map_err(|_| {
                StrategyFileFault::DeviceMatrixEntry {
                    tensor: t.name.clone(),
                    value: d,
                }
                .of(what)
            })
        })
        .collect::<Result<Vec<u32>, _>>()?;
    let map_of = |e: &[i64]| -> Result<pb::TensorMap, StrategyFileError> {
        Ok(pb::TensorMap {
            dim: e
                .iter()
                .map(|&k| to_i32(k, "tensor_map entry"))
                .collect::<Result<_, _>>()?,
        })
    };
    let tensor_map = if ms.is_flat() {
        let flat: Vec<i64> = ms.tensor_map.iter().map(|e| e[0]).collect();
        vec![map_of(&flat)?]
    } else {
        let mut nested = ms
            .tensor_map
            .iter()
            .map(|e| map_of(e))
            .collect::<Result<Vec<_>, _>>()?;
        if nested.len() == 1 {
            // MindSpore reads a single map as flat: a 1-D tensor's nested
            // map gets an empty one after it, as MindSpore's writer does.
            nested.push(pb::TensorMap { dim: Vec::new() });
        }
        nested
    };
    Ok(pb::ParallelLayoutItem {
        param_name: name.to_string(),
        parallel_layouts: pb::ParallelLayouts {
            dev_matrix: vec![pb::DevMatrix { dim: dev }],
            tensor_map,
            param_split_shape: vec![pb::ParamSplitShape {
                dim: ms.param_split_shape.iter().map(|&x| x as i64).collect(),
            }],
            indices_offset: vec![pb::IndicesOffset { dim: Vec::new() }],
            field: 0,
            opt_weight_shard_step: to_i32(ms.opt_weight_shard_step, "opt_weight_shard_step")?,
            opt_weight_shard_size: to_i32(ms.opt_weight_shard_size, "opt_weight_shard_size")?,
        },
    })
}
