//! Whether a strategy's layouts fit the model, decided before any
//! arithmetic: the ranks that compute each block.

use std::collections::BTreeMap;
use std::ops::Range;

use super::*;
use crate::dtype::DType;
use crate::geometry::Region;
use crate::layout::TensorLayout;
use crate::strategy::Strategy;

/// The ranks that compute each block, found by [`check_layout`].
pub(super) struct Schedule {
    /// Embedding ranks and the dimension they split (none when whole).
    pub(super) embed: (Vec<u64>, Option<usize>),
    /// Per layer: attention ranks, MLP ranks.
    pub(super) layers: Vec<(Vec<u64>, Vec<u64>)>,
    /// Final norm and output projection ranks, and the dimension of the
    /// projection they split.
    pub(super) head: (Vec<u64>, Option<usize>),
}

pub(super) struct Checker<'a> {
    config: &'a ModelConfig,
    s: &'a Strategy,
}

fn axis_list(l: &TensorLayout, axes: &[usize]) -> Vec<String> {
    axes.iter().map(|&a| l.axis_name(a).to_string()).collect()
}

pub(super) fn pin_text(l: &TensorLayout) -> String {
    if l.pin().is_empty() {
        return "every stage".into();
    }
    l.pin_text()
}

/// Rows (dim 0) of `r`, as a range.
pub(super) fn span(r: &Region, d: usize) -> Range<u64> {
    r.offset()[d]..r.end(d)
}

impl<'a> Checker<'a> {
    fn layout(&self, name: &str) -> Result<&'a TensorLayout, ModelError> {
        let info = self
            .s
            .tensor(name)
            .ok_or_else(|| ModelError::MissingTensor {
                tensor: name.to_string(),
                place: format!("strategy `{}`", self.s.name()),
            })?;
        if info.dtype != DType::F32 {
            return Err(ModelError::DType {
                tensor: name.to_string(),
                dtype: info.dtype,
            });
        }
        let l = self.s.layout(name).expect("a tensor of the strategy");
        let unsupported = |fault: LayoutFault| self.unsupported(name, l, fault);
        if l.is_explicit() {
            return Err(unsupported(LayoutFault::Explicit));
        }
        if l.mesh().axes() != self.s.mesh().axes() {
            return Err(unsupported(LayoutFault::OtherMesh {
                layout_mesh: l.mesh().to_string(),
                strategy_mesh: self.s.mesh().to_string(),
            }));
        }
        if !l.partial().is_empty() {
            return Err(unsupported(LayoutFault::Partial(axis_list(l, l.partial()))));
        }
        let split: Vec<(usize, Vec<String>)> = (0..l.dims().len())
            .filter(|&d| !l.dims()[d].axes().is_empty())
            .map(|d| (d, axis_list(l, l.dims()[d].axes())))
            .collect();
        if split.len() > 1 {
            return Err(unsupported(LayoutFault::SplitTwice(split)));
        }
        Ok(l)
    }

    fn whole(&self, name: &str) -> Result<&'a TensorLayout, ModelError> {
        let l = self.layout(name)?;
        if let Some(d) = l.dims().iter().find(|d| !d.axes().is_empty()) {
            return Err(self.unsupported(name, l, LayoutFault::SplitNorm(axis_list(l, d.axes()))));
        }
        Ok(l)
    }

    /// The stage the block of `names` runs on: on each pinned axis, the
    /// first coordinate every tensor pinning that axis is on (a tensor on
    /// several stages, such as a tied embedding, joins the block's stage).
    fn stage(&self, names: &[String], fault: StageFault) -> Result<Vec<(usize, u64)>, ModelError> {
        // Per axis: the coordinates still shared, and the tensor that
        // narrowed them last (for the error).
        let mut pins: BTreeMap<usize, (Vec<u64>, &str)> = BTreeMap::new();
        for name in names {
            let l = self.layout(name)?;
            for run in l.pin().chunk_by(|x, y| x.0 == y.0) {
                let a = run[0].0;
                let mine: Vec<u64> = run.iter().map(|&(_, c)| c).collect();
                match pins.get_mut(&a) {
                    Some((common, first)) => {
                        let kept: Vec<u64> = common
                            .iter()
                            .copied()
                            .filter(|c| mine.contains(c))
                            .collect();
                        if kept.is_empty() {
                            let other = self.s.layout(first).expect("checked");
                            return Err(ModelError::Stages {
                                strategy: self.s.name().to_string(),
                                tensor: name.clone(),
                                pin: pin_text(l),
                                other: first.to_string(),
                                other_pin: pin_text(other),
                                fault,
                            });
                        }
                        *common = kept;
                        *first = name;
                    }
                    None => {
                        pins.insert(a, (mine, name));
                    }
                }
            }
        }
        Ok(pins.into_iter().map(|(a, (c, _))| (a, c[0])).collect())
    }

    /// The ranks of one replica of a block: pinned axes at the stage,
    /// `axes` ranging over all positions (block order), every other axis
    /// at 0. Every tensor of `names` must be on each of them.
    fn group(
        &self,
        stage: &[(usize, u64)],
        axes: &[usize],
        lead: &str,
        names: &[String],
    ) -> Result<Vec<u64>, ModelError> {
        let mesh = self.s.mesh();
        let lead_layout = self.layout(lead)?;
        if let Some(&(a, c)) = stage.iter().find(|(a, _)| axes.contains(a)) {
            let other = names
                .iter()
                .find(|n| {
                    self.s
                        .layout(n)
                        .is_some_and(|l| l.pin().iter().any(|&(p, _)| p == a))
                })
                .cloned()
                .unwrap_or_default();
            return Err(ModelError::Stages {
                strategy: self.s.name().to_string(),
                tensor: lead.to_string(),
                pin: format!("every position of {}", lead_layout.axis_name(a)),
                other,
                other_pin: format!("{}={c}", lead_layout.axis_name(a)),
                fault: StageFault::SplitOverPin,
            });
        }
        let count: u64 = axes.iter().map(|&a| mesh.axis_size(a)).product();
        let mut ranks = Vec::with_capacity(count as usize);
        for block in 0..count {
            let mut coords = vec![0u64; mesh.axes().len()];
            for &(a, c) in stage {
                coords[a] = c;
            }
            let mut b = block;
            for &a in axes.iter().rev() {
                coords[a] = b % mesh.axis_size(a);
                b /= mesh.axis_size(a);
            }
            let rank = mesh.rank_of(&coords).expect("coordinates inside the mesh");
            for name in names {
                let l = self.layout(name)?;
                if !l.holds(rank) {
                    return Err(ModelError::Stages {
                        strategy: self.s.name().to_string(),
                        tensor: name.clone(),
                        pin: pin_text(l),
                        other: lead.to_string(),
                        other_pin: format!("rank {rank}"),
                        fault: StageFault::NotHeld,
                    });
                }
            }
            ranks.push(rank);
        }
        Ok(ranks)
    }

    fn unsupported(&self, tensor: &str, l: &TensorLayout, fault: LayoutFault) -> ModelError {
        ModelError::UnsupportedLayout {
            strategy: self.s.name().to_string(),
            tensor: tensor.to_string(),
            layout: l.to_string(),
            fault,
        }
    }

    fn inconsistent(&self, tensor: &str, other: &str, fault: SplitFault) -> ModelError {
        ModelError::InconsistentSplit {
            strategy: self.s.name().to_string(),
            tensor: tensor.to_string(),
            layout: self
                .s
                .layout(tensor)
                .map(|l| l.to_string())
                .unwrap_or_default(),
            other: other.to_string(),
            other_layout: self
                .s
                .layout(other)
                .map(|l| l.to_string())
                .unwrap_or_default(),
            fault,
        }
    }

    fn describe(l: &TensorLayout) -> WeightSplit {
        match l.dims().iter().position(|d| !d.axes().is_empty()) {
            None => WeightSplit::Whole,
            Some(0) => WeightSplit::Rows(axis_list(l, l.dims()[0].axes())),
            Some(d) => WeightSplit::Columns(axis_list(l, l.dims()[d].axes())),
        }
    }

    fn head_rows(&self, name: &str, rank: u64) -> Result<Range<u64>, ModelError> {
        let l = self.s.layout(name).expect("checked");
        let rows = span(&l.region_of(rank).expect("held"), 0);
        let hd = self.config.head_dim as u64;
        if !rows.start.is_multiple_of(hd) || !rows.end.is_multiple_of(hd) {
            return Err(ModelError::HeadSplit {
                strategy: self.s.name().to_string(),
                tensor: name.to_string(),
                layout: l.to_string(),
                rank,
                rows: span_text(&rows),
                head_dim: self.config.head_dim,
            });
        }
        Ok(rows.start / hd..rows.end / hd)
    }

    fn attention(&self, i: usize, stage: &[(usize, u64)]) -> Result<Vec<u64>, ModelError> {
        let [norm, q, k, v, o] = [
            "input_layernorm.weight",
            "self_attn.q_proj.weight",
            "self_attn.k_proj.weight",
            "self_attn.v_proj.weight",
            "self_attn.o_proj.weight",
        ]
        .map(|p| layer_tensor(i, p));
        self.whole(&norm)?;
        let lq = self.layout(&q)?;
        if !lq.dims()[1].axes().is_empty() {
            let axes = axis_list(lq, lq.dims()[1].axes());
            return Err(self.unsupported(&q, lq, LayoutFault::AttentionColumns(axes)));
        }
        let axes = lq.dims()[0].axes();
        let q_how = Self::describe(lq);
        for t in [&k, &v] {
            let l = self.layout(t)?;
            if !l.dims()[1].axes().is_empty() || l.dims()[0].axes() != axes {
                let fault = SplitFault::KvAxes {
                    split: Self::describe(l),
                    q: q_how,
                };
                return Err(self.inconsistent(t, &q, fault));
            }
        }
        let lo = self.layout(&o)?;
        if !lo.dims()[0].axes().is_empty() {
            let fault = SplitFault::OutputRows {
                axes: axis_list(lo, lo.dims()[0].axes()),
                q: q_how,
            };
            return Err(self.inconsistent(&o, &q, fault));
        }
        if lo.dims()[1].axes() != axes {
            let fault = SplitFault::OutputAxes {
                split: Self::describe(lo),
                q: q_how,
            };
            return Err(self.inconsistent(&o, &q, fault));
        }
        let names = [norm, q.clone(), k.clone(), v.clone(), o.clone()];
        let ranks = self.group(stage, axes, &q, &names)?;
        let group = (self.config.heads / self.config.kv_heads.max(1)) as u64;
        for &r in &ranks {
            let qh = self.head_rows(&q, r)?;
            for t in [&k, &v] {
                let kh = self.head_rows(t, r)?;
                if qh.start != kh.start * group || qh.end != kh.end * group {
                    let fault = SplitFault::KvHeads {
                        rank: r,
                        q_heads: qh,
                        kv_heads: kh,
                        group,
                    };
                    return Err(self.inconsistent(t, &q, fault));
                }
            }
            let q_rows = span(&lq.region_of(r).expect("held"), 0);
            let o_cols = span(&lo.region_of(r).expect("held"), 1);
            if o_cols != q_rows {
                let fault = SplitFault::OutputHeads {
                    rank: r,
                    columns: o_cols,
                    rows: q_rows,
                };
                return Err(self.inconsistent(&o, &q, fault));
            }
        }
        Ok(ranks)
    }

    fn mlp(&self, i: usize, stage: &[(usize, u64)]) -> Result<Vec<u64>, ModelError> {
        let [norm, gate, up, down] = [
            "post_attention_layernorm.weight",
            "mlp.gate_proj.weight",
            "mlp.up_proj.weight",
            "mlp.down_proj.weight",
        ]
        .map(|p| layer_tensor(i, p));
        self.whole(&norm)?;
        let lg = self.layout(&gate)?;
        if !lg.dims()[1].axes().is_empty() {
            let axes = axis_list(lg, lg.dims()[1].axes());
            return Err(self.unsupported(&gate, lg, LayoutFault::MlpColumns(axes)));
        }
        let axes = lg.dims()[0].axes();
        let g_how = Self::describe(lg);
        let lu = self.layout(&up)?;
        if !lu.dims()[1].axes().is_empty() || lu.dims()[0].axes() != axes {
            let fault = SplitFault::UpAxes {
                split: Self::describe(lu),
                gate: g_how,
            };
            return Err(self.inconsistent(&up, &gate, fault));
        }
        let ld = self.layout(&down)?;
        if !ld.dims()[0].axes().is_empty() || ld.dims()[1].axes() != axes {
            let fault = SplitFault::DownAxes {
                split: Self::describe(ld),
                gate: g_how,
            };
            return Err(self.inconsistent(&down, &gate, fault));
        }
        let names = [norm, gate.clone(), up.clone(), down.clone()];
        let ranks = self.group(stage, axes, &gate, &names)?;
        for &r in &ranks {
            let g_rows = span(&lg.region_of(r).expect("held"), 0);
            let u_rows = span(&lu.region_of(r).expect("held"), 0);
            let d_cols = span(&ld.region_of(r).expect("held"), 1);
            if u_rows != g_rows {
                let fault = SplitFault::UpRows {
                    rank: r,
                    up: u_rows,
                    gate: g_rows,
                };
                return Err(self.inconsistent(&up, &gate, fault));
            }
            if d_cols != g_rows {
                let fault = SplitFault::DownColumns {
                    rank: r,
                    columns: d_cols,
                    rows: g_rows,
                };
                return Err(self.inconsistent(&down, &gate, fault));
            }
        }
        Ok(ranks)
    }

    /// The one split dimension of `name` (if any) and its axes.
    fn split_axes(&self, name: &str) -> Result<(Option<usize>, &'a [usize]), ModelError> {
        let l = self.layout(name)?;
        Ok(match l.dims().iter().position(|d| !d.axes().is_empty()) {
            Some(d) => (Some(d), l.dims()[d].axes()),
            None => (None, &[]),
        })
    }

    fn run(&self) -> Result<Schedule, ModelError> {
        self.config.validate()?;
        for want in self.config.tensors() {
            let info = self
                .s
                .tensor(&want.name)
                .ok_or_else(|| ModelError::MissingTensor {
                    tensor: want.name.clone(),
                    place: format!("strategy `{}`", self.s.name()),
                })?;
            if info.shape != want.shape {
                return Err(ModelError::Shape {
                    tensor: want.name,
                    expected: want.shape,
                    found: info.shape.clone(),
                });
            }
        }
        let embed_names = [EMBED.to_string()];
        let embed_stage = self.stage(&embed_names, StageFault::Embedding)?;
        let (embed_dim, embed_axes) = self.split_axes(EMBED)?;
        let embed = (
            self.group(&embed_stage, embed_axes, EMBED, &embed_names)?,
            embed_dim,
        );
        let mut layers = Vec::with_capacity(self.config.layers);
        for i in 0..self.config.layers {
            let names: Vec<String> = LAYER_PARTS.iter().map(|p| layer_tensor(i, p)).collect();
            // Every tensor is checked on its own before the stage is taken.
            for n in &names {
                self.layout(n)?;
            }
            let stage = self.stage(&names, StageFault::Layer)?;
            layers.push((self.attention(i, &stage)?, self.mlp(i, &stage)?));
        }
        // With tied weights the embedding is the output projection too: it
        // must also be on the final norm's stage.
        let head_tensor = self.config.head_tensor();
        let head_names = [FINAL_NORM.to_string(), head_tensor.to_string()];
        self.whole(FINAL_NORM)?;
        self.layout(head_tensor)?;
        let head_stage = self.stage(&head_names, StageFault::Head)?;
        let (head_dim, head_axes) = self.split_axes(head_tensor)?;
        let head = (
            self.group(&head_stage, head_axes, head_tensor, &head_names)?,
            head_dim,
        );
        Ok(Schedule {
            embed,
            layers,
            head,
        })
    }
}

/// Checks that `strategy` lays out the model of `config` in a way
/// [`forward_sharded`] can compute correctly (see the module
/// documentation), without computing anything.
///
/// # Errors
///
/// The first problem found, in model order: [`ModelError::MissingTensor`],
/// [`ModelError::Shape`], [`ModelError::DType`],
/// [`ModelError::UnsupportedLayout`], [`ModelError::InconsistentSplit`],
/// [`ModelError::HeadSplit`] or [`ModelError::Stages`], naming the tensor.
pub fn check_layout(config: &ModelConfig, strategy: &Strategy) -> Result<(), ModelError> {
    schedule(config, strategy).map(|_| ())
}

/// The ranks that compute each block of the model under `strategy`, or
/// why its layouts do not fit.
pub(super) fn schedule(config: &ModelConfig, strategy: &Strategy) -> Result<Schedule, ModelError> {
    Checker {
        config,
        s: strategy,
    }
    .run()
}
