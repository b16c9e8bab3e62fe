//! Reading a training layout by axis role: the roles of the training
//! mesh's axes and each layout sorted into tensor-parallel, data-parallel
//! and pipeline parts.

use super::{AxisRole, AxisRoleFault, DeriveError, DeriveRules};
use crate::layout::{SplitPolicy, TensorLayout};
use crate::notation::mindspore::MindSporeLayout;
use crate::strategy::Strategy;

/// One dimension of a training layout, sorted by role.
#[derive(Debug, Default)]
pub(super) struct SrcDim {
    /// Tensor-parallel axes (name, size), outermost first.
    pub(super) tp: Vec<(String, u64)>,
    /// Data-parallel axes (name, size), outermost first.
    pub(super) dp: Vec<(String, u64)>,
    /// The data-parallel axes are the optimizer shard.
    pub(super) opt: bool,
    pub(super) policy: SplitPolicy,
}

impl SrcDim {
    pub(super) fn tp_ways(&self) -> u64 {
        self.tp.iter().map(|(_, n)| n).product()
    }
}

/// A training layout, sorted by role.
#[derive(Debug, Default)]
pub(super) struct SrcView {
    pub(super) dims: Vec<SrcDim>,
    /// (stages, ascending; stage count).
    pub(super) stage: Option<(Vec<u64>, u64)>,
    pub(super) partial: Vec<String>,
    pub(super) dropped_pins: Vec<(String, u64)>,
}

/// Axis roles of the training strategy's own mesh: configured, named, or
/// by use (splits a tensor: tensor-parallel; only pins: pipeline; neither:
/// data-parallel).
pub(super) fn strategy_roles(
    train: &Strategy,
    rules: &DeriveRules,
) -> Result<Vec<AxisRole>, DeriveError> {
    let mesh = train.mesh();
    let n = mesh.axes().len();
    let mut splits = vec![false; n];
    let mut pins = vec![false; n];
    for l in train.layouts() {
        if **l.mesh() != **mesh {
            continue;
        }
        for d in l.dims() {
            for &a in d.axes() {
                splits[a] = true;
            }
        }
        for &(a, _) in l.pin() {
            pins[a] = true;
        }
    }
    let mut roles = Vec::with_capacity(n);
    for (i, a) in mesh.axes().iter().enumerate() {
        let role = match rules.role_of(&a.name) {
            Some(r) => r,
            None => match (splits[i], pins[i]) {
                (true, true) => {
                    return Err(DeriveError::AxisRoles {
                        strategy: train.name().to_string(),
                        fault: AxisRoleFault::SplitsAndPins {
                            axis: a.name.clone(),
                        },
                    });
                }
                (true, false) => AxisRole::Tensor,
                (false, true) => AxisRole::Pipeline,
                (false, false) => AxisRole::Data,
            },
        };
        roles.push(role);
    }
    let pp: Vec<String> = mesh
        .axes()
        .iter()
        .zip(&roles)
        .filter(|(_, r)| **r == AxisRole::Pipeline)
        .map(|(a, _)| a.name.clone())
        .collect();
    if pp.len() > 1 {
        return Err(DeriveError::AxisRoles {
            strategy: train.name().to_string(),
            fault: AxisRoleFault::SeveralPipelines { axes: pp },
        });
    }
    Ok(roles)
}

/// Sorts a layout on the strategy's mesh by the strategy's axis roles.
pub(super) fn view_native(
    strategy: &str,
    tensor: &str,
    l: &TensorLayout,
    roles: &[AxisRole],
) -> Result<SrcView, DeriveError> {
    let mesh = l.mesh();
    let name = |a: usize| (l.axis_name(a).to_string(), mesh.axis_size(a));
    let mut view = SrcView::default();
    for (d, dim) in l.dims().iter().enumerate() {
        let mut sd = SrcDim {
            policy: dim.policy().clone(),
            ..Default::default()
        };
        for &a in dim.axes() {
            match roles[a] {
                AxisRole::Tensor => sd.tp.push(name(a)),
                AxisRole::Data => sd.dp.push(name(a)),
                AxisRole::Pipeline => {
                    return Err(DeriveError::PipelineSplit {
                        strategy: strategy.to_string(),
                        tensor: tensor.to_string(),
                        axis: l.axis_name(a).to_string(),
                    });
                }
            }
        }
        // The optimizer shard: the innermost split of dimension 0, all
        // data-parallel after every tensor-parallel axis.
        let n_dp = sd.dp.len();
        let axes = dim.axes();
        sd.opt = d == 0
            && n_dp > 0
            && axes[axes.len() - n_dp..]
                .iter()
                .all(|&a| roles[a] == AxisRole::Data);
        view.dims.push(sd);
    }
    view.partial = l
        .partial()
        .iter()
        .map(|&a| l.axis_name(a).to_string())
        .collect();
    for &(a, c) in l.pin() {
        if roles[a] == AxisRole::Pipeline {
            view.stage
                .get_or_insert_with(|| (Vec::new(), mesh.axis_size(a)))
                .0
                .push(c);
        } else {
            view.dropped_pins.push((l.axis_name(a).to_string(), c));
        }
    }
    Ok(view)
}

/// Sorts a layout on a mesh of its own (a MindSpore parameter's device
/// matrix): the optimizer shard is the innermost split of dimension 0 of
/// the size the rules record for the tensor, or, without a record,
/// MindSpore's reading of the layout; the other split axes are
/// tensor-parallel unless their names say otherwise, and a pin is the
/// pipeline stage unless its axis's name says otherwise.
pub(super) fn view_own(
    strategy: &str,
    tensor: &str,
    l: &TensorLayout,
    rules: &DeriveRules,
) -> Result<SrcView, DeriveError> {
    let mesh = l.mesh();
    // Axes of dimension 0 that form the optimizer shard.
    let opt: Vec<usize> = match rules.optimizer_shards.get(tensor) {
        Some(&ways) => {
            let mut out = Vec::new();
            let mut prod = 1u64;
            if let Some(d0) = l.dims().first() {
                for &a in d0.axes().iter().rev() {
                    if prod >= ways {
                        break;
                    }
                    prod *= mesh.axis_size(a);
                    out.push(a);
                }
            }
            if prod != ways.max(1) {
                return Err(DeriveError::AxisRoles {
                    strategy: strategy.to_string(),
                    fault: AxisRoleFault::OptimizerShard {
                        tensor: tensor.to_string(),
                        ways,
                        layout: l.to_string(),
                    },
                });
            }
            out
        }
        None => match MindSporeLayout::from_layout(&first_stage_only(l)) {
            Ok(ms) => {
                let first = usize::from(ms.stage_count > 1);
                let n = mesh.axes().len() - first;
                let mapped: Vec<usize> = ms
                    .tensor_map
                    .first()
                    .into_iter()
                    .flatten()
                    .filter(|&&k| k >= 0)
                    .map(|&k| first + n - 1 - k as usize)
                    .collect();
                l.dims()
                    .first()
                    .map(|d| {
                        d.axes()
                            .iter()
                            .copied()
                            .filter(|a| !mapped.contains(a))
                            .collect()
                    })
                    .unwrap_or_default()
            }
            Err(_) => Vec::new(),
        },
    };
    let roles: Vec<AxisRole> = (0..mesh.axes().len())
        .map(|a| {
            let named = rules.role_of(l.axis_name(a));
            if opt.contains(&a) {
                AxisRole::Data
            } else if l.pin().iter().any(|&(p, _)| p == a) {
                named.unwrap_or(AxisRole::Pipeline)
            } else if l.dims().iter().any(|d| d.axes().contains(&a)) {
                named.unwrap_or(AxisRole::Tensor)
            } else {
                named.unwrap_or(AxisRole::Data)
            }
        })
        .collect();
    let mut view = view_native(strategy, tensor, l, &roles)?;
    if let Some(d0) = view.dims.first_mut() {
        d0.opt = !opt.is_empty();
    }
    Ok(view)
}

/// `l` with each pinned axis at its first coordinate only: a MindSpore
/// layout describes one stage, and a parameter on several stages is cut
/// alike on each.
fn first_stage_only(l: &TensorLayout) -> TensorLayout {
    l.split_pins().swap_remove(0)
}
