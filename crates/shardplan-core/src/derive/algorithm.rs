//! The derivation itself: [`derive_strategy`] and the per-tensor decisions
//! (tensor-parallel splits, dropped splits, pipeline stages).

use super::view::{SrcView, strategy_roles, view_native, view_own};
use super::{
    AxisRole, DeriveError, DeriveNote, DeriveRules, DeriveTarget, Derived, Fallback,
    IndivisibleTensor, LayerRef, RangeFault, SharedTensors, TensorReason,
};
use crate::layout::{DimSplit, LayoutConfig, SplitPolicy, TensorLayout};
use crate::pattern::{Glob, LayerPattern};
use crate::strategy::{Strategy, TensorInfo};

/// Contiguous layer ranges of the target stages.
fn stage_ranges(
    rules: &DeriveRules,
    stages: u64,
    layers: u64,
) -> Result<Vec<[u64; 2]>, DeriveError> {
    if let Some(r) = &rules.ranges {
        if r.len() as u64 != stages {
            return Err(DeriveError::Ranges {
                fault: RangeFault::Count {
                    ranges: r.len(),
                    stages,
                },
            });
        }
        if let Some(w) = r.iter().find(|w| w[0] > w[1]) {
            return Err(DeriveError::Ranges {
                fault: RangeFault::Empty {
                    first: w[0],
                    last: w[1],
                },
            });
        }
        return Ok(r.clone());
    }
    // Balanced: the first `layers % stages` stages hold one layer more.
    let (q, rem) = (layers / stages, layers % stages);
    let mut out = Vec::with_capacity(stages as usize);
    let mut start = 0u64;
    for s in 0..stages {
        let n = q + u64::from(s < rem);
        // An empty stage (fewer layers than stages) gets [start, start - 1],
        // or [0, 0] at the start, which `Cx::stage` never matches.
        out.push([start, (start + n).saturating_sub(1)]);
        start += n;
    }
    Ok(out)
}

fn compile_globs(globs: &[String]) -> Result<Vec<Glob>, DeriveError> {
    globs
        .iter()
        .map(|g| {
            Glob::new(g).map_err(|fault| DeriveError::Pattern {
                pattern: g.clone(),
                fault,
            })
        })
        .collect()
}

/// What is dropped from a training layout: data-parallel splits, partial
/// sums and pins on axes other than the pipeline.
fn dropped(view: &SrcView) -> Vec<DeriveNote> {
    let mut notes = Vec::new();
    for (d, sd) in view.dims.iter().enumerate() {
        if sd.dp.is_empty() {
            continue;
        }
        let axes: Vec<String> = sd.dp.iter().map(|(a, _)| a.clone()).collect();
        let ways = sd.dp.iter().map(|(_, n)| n).product();
        notes.push(if sd.opt {
            DeriveNote::OptimizerShardDropped { axes, ways }
        } else {
            DeriveNote::DataSplitDropped { dim: d, axes, ways }
        });
    }
    if !view.partial.is_empty() {
        notes.push(DeriveNote::PartialReduced {
            axes: view.partial.clone(),
        });
    }
    for (axis, coord) in &view.dropped_pins {
        notes.push(DeriveNote::PinDropped {
            axis: axis.clone(),
            coord: *coord,
        });
    }
    notes
}

/// The target stages of a tensor in no layer: the source's stages at the
/// same relative position (the last stays last), or every stage (empty)
/// when the source holds it on all.
fn mapped_stages(view: &SrcView, stages: u64, notes: &mut Vec<DeriveNote>) -> Vec<u64> {
    let Some((from, from_count)) = &view.stage else {
        notes.push(DeriveNote::EveryStage { stages });
        return Vec::new();
    };
    let mut to: Vec<u64> = from
        .iter()
        .map(|&f| {
            if f + 1 == *from_count {
                stages - 1
            } else {
                f * stages / from_count
            }
        })
        .collect();
    to.dedup();
    notes.push(DeriveNote::StageMapped {
        from: from.clone(),
        from_count: *from_count,
        to: to.clone(),
        to_count: stages,
    });
    to
}

/// Everything a derivation decides per tensor from.
struct Cx<'a> {
    target: &'a DeriveTarget,
    rules: &'a DeriveRules,
    shared: Vec<Glob>,
    replicate: Vec<Glob>,
    /// Layer ranges of the target stages (empty with one stage).
    ranges: Vec<[u64; 2]>,
    /// Number of layers found.
    layers: u64,
}

impl<'a> Cx<'a> {
    /// The rules compiled for `train`, and the layer of each of its
    /// tensors: the globs, the layer pattern, and with several target
    /// stages the layer range of each (which needs a layer pattern unless
    /// the source is pipelined itself).
    fn new(
        train: &Strategy,
        target: &'a DeriveTarget,
        rules: &'a DeriveRules,
        roles: &[AxisRole],
    ) -> Result<(Self, Vec<Option<u64>>), DeriveError> {
        let shared_patterns: Vec<String> = rules.shared.iter().map(|r| r.pattern.clone()).collect();
        let shared = compile_globs(&shared_patterns)?;
        let replicate = compile_globs(&rules.replicate)?;
        let pattern = layer_pattern(rules)?;
        let layer_of: Vec<Option<u64>> = train
            .tensors()
            .iter()
            .map(|t| pattern.as_ref().and_then(|p| p.capture(&t.name)))
            .collect();
        let stages = target.pp_degree();
        let layers = layer_of.iter().flatten().max().map_or(0, |m| m + 1);
        let ranges = if stages > 1 {
            let source_pipelined = roles.contains(&AxisRole::Pipeline)
                || train
                    .layouts()
                    .iter()
                    .any(|l| **l.mesh() != **train.mesh() && !l.pin().is_empty());
            if pattern.is_none() && !source_pipelined {
                return Err(DeriveError::NoLayerPattern { stages });
            }
            stage_ranges(rules, stages, layers)?
        } else {
            Vec::new()
        };
        let cx = Cx {
            target,
            rules,
            shared,
            replicate,
            ranges,
            layers,
        };
        Ok((cx, layer_of))
    }
}

impl Cx<'_> {
    /// Tensor `t`'s target layout and the notes saying why, from its
    /// source view; an indivisible split is pushed to `indivisible`.
    fn derive_tensor(
        &self,
        t: &TensorInfo,
        view: &SrcView,
        layer: Option<u64>,
        indivisible: &mut Vec<IndivisibleTensor>,
    ) -> Result<(TensorLayout, Vec<DeriveNote>), DeriveError> {
        let mut notes = dropped(view);
        let dims = self.tp_dims(t, view, &mut notes, indivisible);
        let pin = self.stage(t, layer, view, &mut notes)?;
        let cfg = LayoutConfig::new(dims).with_pin(pin);
        let layout =
            TensorLayout::new(self.target.mesh.clone(), &t.shape, &cfg).map_err(|source| {
                DeriveError::Layout {
                    tensor: t.name.clone(),
                    source,
                }
            })?;
        Ok((layout, notes))
    }

    /// The target splits of tensor `t`: the dimension split most ways over
    /// tensor-parallel axes keeps a split over the target's. An
    /// indivisible split under the `error` fallback is pushed to
    /// `indivisible`.
    fn tp_dims(
        &self,
        t: &TensorInfo,
        view: &SrcView,
        notes: &mut Vec<DeriveNote>,
        indivisible: &mut Vec<IndivisibleTensor>,
    ) -> Vec<DimSplit> {
        let tp = self.target.tp_degree();
        let mut dims = vec![DimSplit::none(); t.shape.len()];
        let tp_dims: Vec<(usize, u64)> = view
            .dims
            .iter()
            .enumerate()
            .map(|(d, sd)| (d, sd.tp_ways()))
            .filter(|&(_, w)| w > 1)
            .collect();
        // The most ways; the first dimension on a tie.
        let keep = tp_dims
            .iter()
            .copied()
            .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)));
        if self.replicate.iter().any(|g| g.matches(&t.name)) {
            notes.push(DeriveNote::ForcedReplicate);
            return dims;
        }
        let Some((kd, from)) = keep else {
            notes.push(DeriveNote::NotSplit);
            return dims;
        };
        for &(d, w) in tp_dims.iter().filter(|(d, _)| *d != kd) {
            notes.push(if tp > 1 {
                DeriveNote::TpDropped {
                    dim: d,
                    from: w,
                    kept: kd,
                }
            } else {
                DeriveNote::TpMerged { dim: d, from: w }
            });
        }
        if tp == 1 {
            notes.push(DeriveNote::TpMerged { dim: kd, from });
            return dims;
        }
        let policy = self.kept_policy(t, kd, from, view, notes, indivisible);
        if let Some(policy) = policy {
            dims[kd] = DimSplit {
                axes: self.target.tp_axes.clone(),
                policy,
            };
        }
        dims
    }

    /// How the kept dimension `kd` (split `from` ways in the source) is
    /// split over the target's tensor-parallel axes: a `chunk` or
    /// `balanced` source keeps its policy; an even one, or one of explicit
    /// block sizes, is split evenly where the target's degree divides the
    /// size; otherwise the fallback's (`None`: replicated, or an
    /// indivisible tensor pushed to `indivisible`).
    fn kept_policy(
        &self,
        t: &TensorInfo,
        kd: usize,
        from: u64,
        view: &SrcView,
        notes: &mut Vec<DeriveNote>,
        indivisible: &mut Vec<IndivisibleTensor>,
    ) -> Option<SplitPolicy> {
        let tp = self.target.tp_degree();
        let size = t.shape[kd];
        let policy = match &view.dims[kd].policy {
            p @ (SplitPolicy::Chunk | SplitPolicy::Balanced) => Some(p.clone()),
            SplitPolicy::Even | SplitPolicy::Blocks(_) => {
                size.is_multiple_of(tp).then_some(SplitPolicy::Even)
            }
        };
        match policy {
            Some(policy) => {
                notes.push(DeriveNote::TpKept {
                    dim: kd,
                    from,
                    to: tp,
                    policy: policy.clone(),
                });
                Some(policy)
            }
            None => {
                notes.push(DeriveNote::Fallback {
                    dim: kd,
                    size,
                    tp,
                    fallback: self.rules.fallback,
                });
                match self.rules.fallback {
                    Fallback::Error => {
                        indivisible.push(IndivisibleTensor {
                            tensor: t.name.clone(),
                            dim: kd,
                            size,
                        });
                        None
                    }
                    Fallback::Replicate => None,
                    Fallback::Chunk => Some(SplitPolicy::Chunk),
                }
            }
        }
    }

    /// The target stages of tensor `t` (in layer `layer`), as pins on the
    /// target's pipeline axis; empty = every stage.
    fn stage(
        &self,
        t: &TensorInfo,
        layer: Option<u64>,
        view: &SrcView,
        notes: &mut Vec<DeriveNote>,
    ) -> Result<Vec<(String, u64)>, DeriveError> {
        let stages = self.target.pp_degree();
        if stages == 1 {
            if let Some((from, from_count)) = &view.stage {
                notes.push(DeriveNote::StagesMerged {
                    from: from.clone(),
                    from_count: *from_count,
                });
            }
            return Ok(Vec::new());
        }
        let shared = self
            .shared
            .iter()
            .zip(&self.rules.shared)
            .find(|(g, _)| g.matches(&t.name));
        let to = if let Some((_, rule)) = shared {
            self.shared_stages(t, rule, notes)?
        } else if let Some(layer) = layer {
            let s = self.stage_of_layer(&t.name, layer)?;
            let [first, last] = self.ranges[s as usize];
            notes.push(DeriveNote::StageByLayer {
                layer,
                stage: s,
                stages,
                first,
                last,
            });
            vec![s]
        } else {
            mapped_stages(view, stages, notes)
        };
        let pp = self.target.pp_axis.clone().unwrap_or_default();
        Ok(to.into_iter().map(|s| (pp.clone(), s)).collect())
    }

    /// The stages of a tensor a `derive.shared` rule names: every stage
    /// (empty) without layers, else the stages of the layers it lists.
    fn shared_stages(
        &self,
        t: &TensorInfo,
        rule: &SharedTensors,
        notes: &mut Vec<DeriveNote>,
    ) -> Result<Vec<u64>, DeriveError> {
        let stages = self.target.pp_degree();
        if rule.layers.is_empty() {
            notes.push(DeriveNote::Shared { stages });
            return Ok(Vec::new());
        }
        let mut layers: Vec<u64> = Vec::with_capacity(rule.layers.len());
        for r in &rule.layers {
            let l = match r {
                LayerRef::Index(i) => *i,
                LayerRef::First => 0,
                LayerRef::Last => self.layers.saturating_sub(1),
            };
            if l >= self.layers {
                return Err(DeriveError::SharedLayer {
                    pattern: rule.pattern.clone(),
                    tensor: t.name.clone(),
                    layer: r.to_string(),
                    layers: self.layers,
                });
            }
            layers.push(l);
        }
        layers.sort_unstable();
        layers.dedup();
        let mut to = Vec::with_capacity(layers.len());
        for &l in &layers {
            to.push(self.stage_of_layer(&t.name, l)?);
        }
        to.sort_unstable();
        to.dedup();
        notes.push(DeriveNote::SharedByLayers {
            layers,
            to: to.clone(),
            stages,
        });
        Ok(to)
    }

    /// The target stage whose layer range holds `layer`.
    fn stage_of_layer(&self, tensor: &str, layer: u64) -> Result<u64, DeriveError> {
        let stages = self.target.pp_degree();
        let explicit = self.rules.ranges.is_some();
        self.ranges
            .iter()
            .zip(0u64..)
            .find(|([a, b], s)| {
                *a <= layer && layer <= *b && (explicit || non_empty(self.layers, stages, *s))
            })
            .map(|(_, s)| s)
            .ok_or_else(|| DeriveError::Ranges {
                fault: RangeFault::Unheld {
                    tensor: tensor.to_string(),
                    layer,
                },
            })
    }
}

/// Derives the inference layout of every tensor of `train` for `target`.
///
/// See the [module documentation](super) for the rules and
/// `docs/derive.md` for the details.
///
/// # Errors
///
/// - [`DeriveError::ExplicitBoxes`]: a training layout is given box by box;
/// - [`DeriveError::AxisRoles`]: the training axes' roles conflict;
/// - [`DeriveError::PipelineSplit`]: a tensor is split over the pipeline axis;
/// - [`DeriveError::Indivisible`]: with the `error` fallback, tensors whose
///   tensor-parallel split the target does not divide (all of them listed);
/// - [`DeriveError::NoLayerPattern`], [`DeriveError::Ranges`],
///   [`DeriveError::Pattern`]: the pipeline placement cannot be decided;
/// - [`DeriveError::Layout`], [`DeriveError::Strategy`]: internal
///   inconsistencies, reported rather than panicking.
pub fn derive_strategy(
    train: &Strategy,
    target: &DeriveTarget,
    rules: &DeriveRules,
) -> Result<Derived, DeriveError> {
    refuse_explicit_boxes(train)?;
    let roles = strategy_roles(train, rules)?;
    let (cx, layer_of) = Cx::new(train, target, rules, &roles)?;
    let mut layouts = Vec::with_capacity(train.tensors().len());
    let mut reasons = Vec::with_capacity(train.tensors().len());
    let mut indivisible = Vec::new();
    for ((t, l), layer) in train.tensors().iter().zip(train.layouts()).zip(&layer_of) {
        let view = if **l.mesh() == **train.mesh() {
            view_native(train.name(), &t.name, l, &roles)?
        } else {
            view_own(train.name(), &t.name, l, rules)?
        };
        let (layout, notes) = cx.derive_tensor(t, &view, *layer, &mut indivisible)?;
        layouts.push(layout);
        reasons.push(TensorReason {
            tensor: t.name.clone(),
            notes,
        });
    }
    if !indivisible.is_empty() {
        return Err(DeriveError::Indivisible {
            tp: target.tp_degree(),
            tensors: indivisible,
        });
    }
    let strategy = Strategy::new(
        "derived",
        target.mesh.clone(),
        train.tensors().to_vec(),
        layouts,
    )?;
    Ok(Derived {
        strategy,
        reasons,
        roles: train
            .mesh()
            .axes()
            .iter()
            .zip(roles)
            .map(|(a, r)| (a.name.clone(), r))
            .collect(),
        target: target.clone(),
    })
}

/// Explicit boxes say nothing about how a tensor was split: nothing to
/// derive from.
fn refuse_explicit_boxes(train: &Strategy) -> Result<(), DeriveError> {
    match train
        .tensors()
        .iter()
        .zip(train.layouts())
        .find(|(_, l)| l.is_explicit())
    {
        Some((t, _)) => Err(DeriveError::ExplicitBoxes {
            tensor: t.name.clone(),
        }),
        None => Ok(()),
    }
}

/// The rules' layer pattern, compiled.
fn layer_pattern(rules: &DeriveRules) -> Result<Option<LayerPattern>, DeriveError> {
    rules
        .layer
        .as_deref()
        .map(|p| {
            LayerPattern::new(p).map_err(|fault| DeriveError::Pattern {
                pattern: p.to_string(),
                fault,
            })
        })
        .transpose()
}

/// Whether balanced stage `s` holds any layer.
fn non_empty(layers: u64, stages: u64, s: u64) -> bool {
    layers / stages + u64::from(s < layers % stages) > 0
}
