//! Lowering a strategy's rules: the stages section, each rule's glob,
//! form (native grid, MindSpore, DTensor placements, JAX partition spec),
//! pins and split policies, and each form's layout for one tensor.

use std::sync::Arc;

use super::*;

impl Cx {
    pub(super) fn lower_stages(
        &mut self,
        name: &str,
        st: &raw::RawStages,
        mesh: &DeviceMesh,
    ) -> Option<Stages> {
        let Some(axis) = mesh.axis_index(&st.axis.value) else {
            self.unknown_axis(&st.axis, mesh);
            return None;
        };
        let pattern = match LayerPattern::new(&st.layer.value) {
            Ok(p) => p,
            Err(e) => {
                self.error(
                    DiagCode::BadStages,
                    span_of(&st.layer),
                    format!("strategy `{name}`: {e}"),
                    "bad layer pattern",
                    "write e.g. \"model.layers.{}.*\", with {} where the layer index is",
                );
                return None;
            }
        };
        let size = mesh.axis_size(axis);
        let map = match (&st.layers_per_stage, &st.ranges) {
            (Some(n), None) if n.value > 0 => StageMap::PerStage(n.value),
            (None, Some(r)) if r.value.len() as u64 == size => {
                for w in r.value.iter() {
                    if w.value[0] > w.value[1] {
                        self.error(
                            DiagCode::BadStages,
                            span_of(w),
                            format!(
                                "strategy `{name}`: range [{}, {}] is empty",
                                w.value[0], w.value[1]
                            ),
                            "empty range",
                            "ranges are [first, last] layer, inclusive",
                        );
                        return None;
                    }
                }
                StageMap::Ranges(r.value.iter().map(|w| w.value).collect())
            }
            (None, Some(r)) => {
                self.error(
                    DiagCode::BadStages,
                    span_of(r),
                    format!(
                        "strategy `{name}`: {} layer ranges for axis `{}` of size {size}",
                        r.value.len(),
                        st.axis.value
                    ),
                    "one range per stage",
                    "give one [first, last] range per position of the stage axis",
                );
                return None;
            }
            _ => {
                self.error(
                    DiagCode::BadStages,
                    span_of(&st.axis),
                    format!("strategy `{name}`: stages need exactly one of `layers_per_stage` (> 0) or `ranges`"),
                    "stages",
                    "e.g. stages: {axis: pp, layer: \"model.layers.{}.*\", layers_per_stage: 20}",
                );
                return None;
            }
        };
        Some(Stages {
            axis,
            axis_name: st.axis.value.clone(),
            size,
            pattern,
            pattern_span: span_of(&st.layer),
            map,
        })
    }

    pub(super) fn unknown_axis(&mut self, axis: &S<String>, mesh: &DeviceMesh) {
        let names: Vec<&str> = mesh.axes().iter().map(|a| a.name.as_str()).collect();
        self.error(
            DiagCode::UnknownAxis,
            span_of(axis),
            format!("axis `{}` is not on the mesh {mesh}", axis.value),
            "unknown axis",
            &format!("use one of the mesh's axes: {}", names.join(", ")),
        );
    }

    /// Checks what can be checked of a rule without a tensor.
    /// One rule: its glob, its form (exactly one notation), and the axes
    /// it names, each known and each used once.
    pub(super) fn lower_rule(
        &mut self,
        strategy: &str,
        r: &RawRule,
        mesh: &Arc<DeviceMesh>,
        stages: Option<&Stages>,
    ) -> Option<Rule> {
        let pspan = span_of(&r.pattern);
        let glob = self.rule_glob(strategy, r)?;
        self.check_rule_form(strategy, r)?;
        let mut axes = AxisUse {
            mesh,
            seen: Vec::new(),
        };
        let mut ok = true;
        let (dims, replicated) = match &r.dims {
            Some(d) => self.lower_dims(r, d, &mut axes, &mut ok)?,
            None => (None, false),
        };
        let mut partial = Vec::new();
        if let Some(p) = &r.partial {
            for a in &p.value {
                ok &= axes.check(self, a, span_of(p));
                partial.push(a.value.clone());
            }
        }
        let pin = self.lower_pins(r, &mut axes, &mut ok);
        if let Some(st) = stages {
            ok &= self.check_stage_axis(strategy, st, dims.as_deref(), &partial, pspan);
        }
        let policies = match &r.split {
            None => None,
            Some(split) => Some(self.lower_policies(split, dims.as_deref())?),
        };
        let form = if let Some(d) = dims {
            Form::Dims(d)
        } else if replicated {
            Form::Replicated
        } else if let Some(ms) = &r.mindspore {
            Form::MindSpore(mindspore_form(&ms.value), span_of(ms))
        } else if let Some(p) = &r.placements {
            self.placements_form(p, mesh, &pin, stages)?
        } else if let Some(spec) = &r.spec {
            self.jax_form(spec, &mut axes, &mut ok)?
        } else {
            return None;
        };
        if !ok {
            return None;
        }
        Some(Rule {
            glob,
            form,
            policies,
            partial,
            pin,
            pattern: r.pattern.value.clone(),
            pattern_span: pspan,
            dims_span: r.dims.as_ref().map_or(pspan, span_of),
            split_span: r.split.as_ref().map(span_of),
        })
    }

    /// The rule's `match` glob.
    pub(super) fn rule_glob(&mut self, strategy: &str, r: &RawRule) -> Option<Glob> {
        match Glob::new(&r.pattern.value) {
            Ok(g) => Some(g),
            Err(e) => {
                self.error(
                    DiagCode::BadPattern,
                    span_of(&r.pattern),
                    format!("strategy `{strategy}`: pattern `{}`: {e}", r.pattern.value),
                    "bad pattern",
                    "`*` matches any characters, `?` one character",
                );
                None
            }
        }
    }

    /// Exactly one of `dims`, `mindspore`, `placements`, `spec`; `split` and
    /// `partial` only with `dims`.
    pub(super) fn check_rule_form(&mut self, strategy: &str, r: &RawRule) -> Option<()> {
        let pspan = span_of(&r.pattern);
        let forms = [
            r.dims.is_some(),
            r.mindspore.is_some(),
            r.placements.is_some(),
            r.spec.is_some(),
        ];
        if forms.iter().filter(|&&f| f).count() != 1 {
            self.error(
                DiagCode::RuleForm,
                pspan,
                format!(
                    "rule `{}` of strategy `{strategy}` must give exactly one of `dims`, `mindspore`, `placements`, `spec`",
                    r.pattern.value
                ),
                "layout form",
                "pick one notation per rule",
            );
            return None;
        }
        if r.dims.is_none() && (r.split.is_some() || r.partial.is_some()) {
            self.error(
                DiagCode::RuleForm,
                pspan,
                format!(
                    "rule `{}`: `split` and `partial` go with `dims`",
                    r.pattern.value
                ),
                "layout form",
                "use `dims` to give split policies or partial axes",
            );
            return None;
        }
        Some(())
    }

    /// The native form: `dims` as a list of axis lists per dimension (with
    /// their spans), or `replicated`.
    #[allow(clippy::type_complexity)]
    pub(super) fn lower_dims(
        &mut self,
        r: &RawRule,
        d: &S<RawDims>,
        axes: &mut AxisUse<'_>,
        ok: &mut bool,
    ) -> Option<(Option<Vec<(Vec<String>, Span)>>, bool)> {
        match &d.value {
            RawDims::Replicated(word) if word == "replicated" => {
                if r.split.is_some() || r.partial.is_some() {
                    self.error(
                        DiagCode::RuleForm,
                        span_of(&r.pattern),
                        format!(
                            "rule `{}`: `split` and `partial` need one `dims` entry per dimension, not `replicated`",
                            r.pattern.value
                        ),
                        "layout form",
                        "write dims as a list, e.g. [null, null] with partial: [dp]",
                    );
                    return None;
                }
                Some((None, true))
            }
            RawDims::Replicated(word) => {
                self.error(
                    DiagCode::WrongType,
                    span_of(d),
                    format!("`dims: {word}` is neither `replicated` nor a list"),
                    "expected a list",
                    "write one entry per dimension, e.g. [tp, null], or `replicated`",
                );
                None
            }
            RawDims::PerDim(entries) => {
                let mut v = Vec::new();
                for e in entries {
                    let espan = span_of(e);
                    let mut names = Vec::new();
                    if let RawDim::Axes(list) = &e.value {
                        for a in list {
                            *ok &= axes.check(self, a, espan);
                            names.push(a.value.clone());
                        }
                    }
                    v.push((names, espan));
                }
                Some((Some(v), false))
            }
        }
    }

    /// The `at` pins: known axes, coordinates in range, at least one each.
    pub(super) fn lower_pins(
        &mut self,
        r: &RawRule,
        axes: &mut AxisUse<'_>,
        ok: &mut bool,
    ) -> Vec<(String, u64)> {
        let mut pin = Vec::new();
        let Some(at) = &r.at else {
            return pin;
        };
        for (axis, coord) in &at.value {
            let named = S::new(axis.clone(), at.referenced, at.defined);
            if !axes.check(self, &named, span_of(at)) {
                *ok = false;
                continue;
            }
            let mesh = axes.mesh;
            let size = mesh.axis_size(mesh.axis_index(axis).unwrap_or(0));
            if coord.value.0.is_empty() {
                self.error(
                    DiagCode::PinOutOfRange,
                    span_of(coord),
                    format!("`at: {{{axis}: []}}` places the tensor on no coordinate"),
                    "empty list",
                    "give at least one coordinate, or drop the axis from `at`",
                );
                *ok = false;
            }
            for &c in &coord.value.0 {
                if !(c < size) {
                    self.error(
                        DiagCode::PinOutOfRange,
                        span_of(coord),
                        format!("`at: {{{axis}: {c}}}` is beyond axis `{axis}` of size {size}"),
                        "out of range",
                        &format!("coordinates count from 0 to {}", size - 1),
                    );
                    *ok = false;
                }
                pin.push((axis.clone(), c));
            }
        }
        pin
    }

    /// The stage axis pins tensors; a split or a partial sum over it would
    /// collide. False (after reporting) when the rule uses it so.
    pub(super) fn check_stage_axis(
        &mut self,
        strategy: &str,
        st: &Stages,
        dims: Option<&[(Vec<String>, Span)]>,
        partial: &[String],
        pspan: Span,
    ) -> bool {
        let split = dims
            .into_iter()
            .flatten()
            .find(|(n, _)| n.contains(&st.axis_name));
        if split.is_none() && !partial.contains(&st.axis_name) {
            return true;
        }
        self.error(
            DiagCode::AxisReused,
            split.map_or(pspan, |(_, s)| *s),
            format!(
                "axis `{}` is the stage axis of strategy `{strategy}` and cannot split a tensor",
                st.axis_name
            ),
            "stage axis",
            "split over another axis; the stage axis places whole layers",
        );
        false
    }

    /// The `split` policies: one for all dimensions, or one per dimension.
    pub(super) fn lower_policies(
        &mut self,
        s: &S<RawSplit>,
        dims: Option<&[(Vec<String>, Span)]>,
    ) -> Option<Policies> {
        match &s.value {
            RawSplit::All(p) => Some(Policies::All(self.lower_policy(p, span_of(s))?)),
            RawSplit::PerDim(list) => {
                let n = dims.map_or(0, <[_]>::len);
                if list.len() != n {
                    self.error(
                        DiagCode::BadPolicy,
                        span_of(s),
                        format!("`split` has {} entries but `dims` has {n}", list.len()),
                        "one per dimension",
                        "give one policy per dimension (null = even), or a single policy for all",
                    );
                    return None;
                }
                let mut v = Vec::new();
                for p in list {
                    v.push((self.lower_policy(&p.value, span_of(p))?, span_of(p)));
                }
                Some(Policies::PerDim(v))
            }
        }
    }

    pub(super) fn lower_policy(&mut self, p: &RawPolicy, span: Span) -> Option<SplitPolicy> {
        match p {
            RawPolicy::Named(n) if n == "even" => Some(SplitPolicy::Even),
            RawPolicy::Named(n) if n == "chunk" => Some(SplitPolicy::Chunk),
            RawPolicy::Named(n) if n == "balanced" => Some(SplitPolicy::Balanced),
            RawPolicy::Named(n) => {
                self.error(
                    DiagCode::BadPolicy,
                    span,
                    format!("unknown split policy `{n}`"),
                    "unknown policy",
                    "use even, chunk, balanced, or {blocks: [sizes]}",
                );
                None
            }
            RawPolicy::Blocks(b) => Some(SplitPolicy::Blocks(b.clone())),
        }
    }

    /// The DTensor form: one placement per mesh axis that is neither pinned
    /// nor the stage axis.
    pub(super) fn placements_form(
        &mut self,
        p: &S<Vec<S<String>>>,
        mesh: &DeviceMesh,
        pin: &[(String, u64)],
        stages: Option<&Stages>,
    ) -> Option<Form> {
        let mut v = Vec::new();
        for s in &p.value {
            match s.value.parse::<Placement>() {
                Ok(pl) => v.push(pl),
                Err(e) => {
                    self.error(
                        DiagCode::Notation,
                        span_of(s),
                        e.to_string(),
                        "not a placement",
                        &miette_help(&e),
                    );
                    return None;
                }
            }
        }
        // Pinned axes and the stage axis take no placement.
        let free = mesh
            .axes()
            .iter()
            .filter(|a| !pin.iter().any(|(n, _)| *n == a.name))
            .filter(|a| stages.is_none_or(|st| st.axis_name != a.name))
            .count();
        if v.len() != free {
            self.error(
                DiagCode::Notation,
                span_of(p),
                format!("{} placements for {free} mesh axes that are neither pinned by `at` nor the stage axis", v.len()),
                "placement count",
                "give one placement per mesh axis, in mesh order, skipping pinned axes and the stage axis",
            );
            return None;
        }
        Some(Form::Placements(v, span_of(p)))
    }

    /// The JAX form: a PartitionSpec whose axes are on the mesh.
    pub(super) fn jax_form(
        &mut self,
        s: &S<String>,
        axes: &mut AxisUse<'_>,
        ok: &mut bool,
    ) -> Option<Form> {
        match s.value.parse::<PartitionSpec>() {
            Ok(ps) => {
                for axis in ps.dims.iter().flatten() {
                    let named = S::new(axis.clone(), s.referenced, s.defined);
                    *ok &= axes.check(self, &named, span_of(s));
                }
                Some(Form::Jax(ps, span_of(s)))
            }
            Err(e) => {
                self.error(
                    DiagCode::Notation,
                    span_of(s),
                    e.to_string(),
                    "not a PartitionSpec",
                    &miette_help(&e),
                );
                None
            }
        }
    }
}

/// The MindSpore form as written. The stage (from `at` or `stages`) and the
/// device matrix are checked per tensor, once the stage is known; an
/// absent `opt_weight_shard_step` is the step MindSpore would record, so
/// the size alone states the shard (a size that cannot be read keeps a
/// step, so that the layout reports it).
pub(super) fn mindspore_form(ms: &RawMindSpore) -> MindSporeLayout {
    let mut layout = MindSporeLayout {
        dev_matrix: ms.dev_matrix.clone(),
        tensor_map: ms
            .tensor_map
            .iter()
            .map(|e| match e {
                RawMapEntry::One(k) => vec![*k],
                RawMapEntry::Many(v) => v.clone(),
            })
            .collect(),
        opt_weight_shard_size: ms.opt_weight_shard_size,
        opt_weight_shard_step: ms.opt_weight_shard_step.unwrap_or(0),
        param_split_shape: ms.param_split_shape.clone(),
        stage: 0,
        stage_count: 1,
    };
    if ms.opt_weight_shard_step.is_none() {
        layout.opt_weight_shard_step = layout.recorded_step().unwrap_or(1);
    }
    layout
}

/// The axes one layout names so far: each must be on the mesh and used
/// once across dims, partial, at and the stage axis.
pub(super) struct AxisUse<'a> {
    mesh: &'a DeviceMesh,
    seen: Vec<(String, Span)>,
}

impl AxisUse<'_> {
    /// Records `axis` (at its span, or `fallback`); false, after reporting,
    /// for an axis not on the mesh or used before.
    pub(super) fn check(&mut self, cx: &mut Cx, axis: &S<String>, fallback: Span) -> bool {
        let span = match span_of(axis) {
            Span { offset: 0, len: 0 } => fallback,
            s => s,
        };
        let mesh = self.mesh;
        if mesh.axis_index(&axis.value).is_none() {
            let names: Vec<&str> = mesh.axes().iter().map(|a| a.name.as_str()).collect();
            cx.error(
                DiagCode::UnknownAxis,
                span,
                format!("axis `{}` is not on the mesh {mesh}", axis.value),
                "unknown axis",
                &format!("use one of the mesh's axes: {}", names.join(", ")),
            );
            return false;
        }
        if let Some((_, first)) = self.seen.iter().find(|(n, _)| *n == axis.value) {
            let (line, col) = diag::line_col(&cx.text, first.offset);
            cx.error(
                DiagCode::AxisReused,
                span,
                format!(
                    "axis `{}` is used twice in one layout (first at line {line}, column {col})",
                    axis.value
                ),
                "used again",
                "an axis splits one dimension once, or holds partial sums, or pins; drop one use",
            );
            return false;
        }
        self.seen.push((axis.value.clone(), span));
        true
    }
}

#[derive(Debug)]
pub(super) enum StageMap {
    PerStage(u64),
    Ranges(Vec<[u64; 2]>),
}

#[derive(Debug)]
pub(super) struct Stages {
    axis: usize,
    axis_name: String,
    size: u64,
    pattern: LayerPattern,
    pattern_span: Span,
    map: StageMap,
}

impl Stages {
    pub(super) fn stage_of(&self, layer: u64) -> Option<u64> {
        match &self.map {
            StageMap::PerStage(n) => Some(layer / n).filter(|s| *s < self.size),
            StageMap::Ranges(r) => r
                .iter()
                .position(|[a, b]| *a <= layer && layer <= *b)
                .map(|p| p as u64),
        }
    }
}

#[derive(Debug)]
pub(super) enum Policies {
    All(SplitPolicy),
    PerDim(Vec<(SplitPolicy, Span)>),
}

#[derive(Debug)]
pub(super) enum Form {
    Dims(Vec<(Vec<String>, Span)>),
    Replicated,
    MindSpore(MindSporeLayout, Span),
    Placements(Vec<Placement>, Span),
    Jax(PartitionSpec, Span),
}

#[derive(Debug)]
pub(super) struct Rule {
    pub(super) glob: Glob,
    pub(super) form: Form,
    pub(super) policies: Option<Policies>,
    pub(super) partial: Vec<String>,
    pub(super) pin: Vec<(String, u64)>,
    pub(super) pattern: String,
    pub(super) pattern_span: Span,
    pub(super) dims_span: Span,
    pub(super) split_span: Option<Span>,
}

/// A per-tensor failure of a rule, before it is counted and reported.
#[derive(Debug)]
pub(super) struct Failure {
    pub(super) code: DiagCode,
    pub(super) span: Span,
    pub(super) message: String,
    pub(super) label: String,
    pub(super) help: String,
}

impl Rule {
    /// The layout this rule gives tensor `t` on `mesh`, pinned to the
    /// stage of its layer when the strategy has stages.
    pub(super) fn layout_for(
        &self,
        t: &TensorInfo,
        mesh: &Arc<DeviceMesh>,
        stages: Option<&Stages>,
    ) -> Result<TensorLayout, Failure> {
        let pin = self.pin_with_stage(t, stages)?;
        let fail = |e: LayoutError| self.failure(t, e, self.form_span());
        match &self.form {
            Form::Dims(dims) => {
                TensorLayout::new(mesh.clone(), &t.shape, &self.grid_config(dims, pin))
                    .map_err(fail)
            }
            Form::Replicated => {
                let cfg = LayoutConfig::new(vec![DimSplit::none(); t.shape.len()]).with_pin(pin);
                TensorLayout::new(mesh.clone(), &t.shape, &cfg).map_err(fail)
            }
            Form::MindSpore(ms, span) => {
                let (ms, also_on) = self.mindspore_on_stages(t, ms, *span, mesh, &pin)?;
                ms.to_layout_on_stages(&t.shape, &also_on).map_err(fail)
            }
            Form::Placements(p, _) => dtensor::to_layout(
                mesh.clone(),
                &t.shape,
                &self.all_placements(p, mesh, stages),
            )
            .and_then(|l| with_pin(l, pin))
            .map_err(fail),
            Form::Jax(ps, _) => ps
                .to_layout(mesh.clone(), &t.shape)
                .and_then(|l| with_pin(l, pin))
                .map_err(fail),
        }
    }

    /// The rule's pins, plus the stage of the tensor's layer on the stage
    /// axis when the strategy has stages and the rule does not pin it.
    pub(super) fn pin_with_stage(
        &self,
        t: &TensorInfo,
        stages: Option<&Stages>,
    ) -> Result<Vec<(String, u64)>, Failure> {
        let mut pin = self.pin.clone();
        if let Some(st) = stages
            && !pin.iter().any(|(a, _)| *a == st.axis_name)
            && let Some(layer) = st.pattern.capture(&t.name)
        {
            let stage = st.stage_of(layer).ok_or_else(|| Failure {
                code: DiagCode::BadStages,
                span: st.pattern_span,
                message: format!(
                    "tensor `{}` is in layer {layer}, which no stage of axis `{}` holds",
                    t.name, st.axis_name
                ),
                label: "layer outside the stages".into(),
                help: "widen the ranges or layers_per_stage so every layer has a stage".into(),
            })?;
            let _ = st.axis;
            pin.push((st.axis_name.clone(), stage));
        }
        Ok(pin)
    }

    /// Where the rule's layout is written, for diagnostics.
    pub(super) fn form_span(&self) -> Span {
        match &self.form {
            Form::Dims(_) | Form::Replicated => self.dims_span,
            Form::MindSpore(_, s) | Form::Placements(_, s) | Form::Jax(_, s) => *s,
        }
    }

    /// The native grid form: axes per dimension, with the rule's split
    /// policies, partial axes and `pin`.
    pub(super) fn grid_config(
        &self,
        dims: &[(Vec<String>, Span)],
        pin: Vec<(String, u64)>,
    ) -> LayoutConfig {
        let mut cfg = LayoutConfig::new(
            dims.iter()
                .map(|(axes, _)| DimSplit::over(axes.iter().cloned()))
                .collect(),
        )
        .with_partial(self.partial.clone())
        .with_pin(pin);
        match &self.policies {
            Some(Policies::All(p)) => {
                for d in cfg.dims.iter_mut().filter(|d| !d.axes.is_empty()) {
                    d.policy = p.clone();
                }
            }
            Some(Policies::PerDim(v)) => {
                for (d, (p, _)) in cfg.dims.iter_mut().zip(v) {
                    d.policy = p.clone();
                }
            }
            None => {}
        }
        cfg
    }

    /// A MindSpore layout placed on its stages: it spans one stage, so a
    /// pin, if any, is on the mesh's first axis (several pins: a tied
    /// embedding, cut alike on each stage), and the device matrix covers
    /// the ranks of one stage. Returns the layout and the stages it is
    /// also on.
    pub(super) fn mindspore_on_stages(
        &self,
        t: &TensorInfo,
        ms: &MindSporeLayout,
        span: Span,
        mesh: &DeviceMesh,
        pin: &[(String, u64)],
    ) -> Result<(MindSporeLayout, Vec<u64>), Failure> {
        let mut ms = ms.clone();
        match pin {
            [] => {}
            [(_, c), ..] if pin.iter().all(|(a, _)| mesh.axis_index(a) == Some(0)) => {
                ms.stage = *c;
                ms.stage_count = mesh.axis_size(0);
            }
            _ => {
                return Err(Failure {
                    code: DiagCode::Notation,
                    span,
                    message: format!(
                        "rule `{}` on tensor `{}`: a MindSpore layout can only be pinned on the first mesh axis (its pipeline stage)",
                        self.pattern, t.name
                    ),
                    label: "pin".into(),
                    help: "put the pipeline axis first in the mesh".into(),
                });
            }
        }
        let per_stage = mesh.rank_count() / ms.stage_count;
        let product = ms
            .dev_matrix
            .iter()
            .try_fold(1u64, |a, &b| a.checked_mul(b));
        if product != Some(per_stage) {
            return Err(Failure {
                code: DiagCode::Notation,
                span,
                message: format!(
                    "rule `{}` on tensor `{}`: dev_matrix {:?} does not span the {per_stage} ranks of a stage of mesh {mesh}",
                    self.pattern, t.name, ms.dev_matrix
                ),
                label: "device matrix".into(),
                help: "the product of dev_matrix must equal the ranks per stage".into(),
            });
        }
        let also_on = pin.iter().skip(1).map(|&(_, c)| c).collect();
        Ok((ms, also_on))
    }

    /// DTensor placements for every mesh axis: axes pinned by `at` and the
    /// stage axis take none (replicated there).
    pub(super) fn all_placements(
        &self,
        p: &[Placement],
        mesh: &DeviceMesh,
        stages: Option<&Stages>,
    ) -> Vec<Placement> {
        let stage_axis = stages.map(|st| st.axis_name.as_str());
        let mut given = p.iter();
        mesh.axes()
            .iter()
            .map(|a| {
                let takes = !self.pin.iter().any(|(n, _)| *n == a.name)
                    && stage_axis != Some(a.name.as_str());
                if takes {
                    *given.next().unwrap_or(&Placement::Replicate)
                } else {
                    Placement::Replicate
                }
            })
            .collect()
    }

    pub(super) fn failure(&self, t: &TensorInfo, e: LayoutError, form_span: Span) -> Failure {
        let shape = format!("{:?}", t.shape);
        let (code, span, label) = match &e {
            LayoutError::DimCount { splits, .. } => (
                DiagCode::DimCount,
                self.dims_span,
                format!("{splits} entries"),
            ),
            LayoutError::UnevenSplit { dim, .. } => {
                let span = match &self.form {
                    Form::Dims(d) => d.get(*dim).map_or(form_span, |(_, s)| *s),
                    _ => form_span,
                };
                (DiagCode::UnevenSplit, span, format!("dimension {dim}"))
            }
            LayoutError::BlockCount { .. } | LayoutError::BlockSum { .. } => (
                DiagCode::BadBlocks,
                self.split_span.unwrap_or(form_span),
                "block sizes".into(),
            ),
            LayoutError::PinOutOfRange { .. } => {
                (DiagCode::PinOutOfRange, self.pattern_span, "pin".into())
            }
            _ => (DiagCode::Notation, form_span, "layout".into()),
        };
        Failure {
            code,
            span,
            message: format!(
                "rule `{}` on tensor `{}` (shape {shape}): {e}",
                self.pattern, t.name
            ),
            label,
            help: miette_help(&e),
        }
    }
}

/// `l` with `pin` added: DTensor and JAX forms know no pins.
fn with_pin(l: TensorLayout, pin: Vec<(String, u64)>) -> Result<TensorLayout, LayoutError> {
    if pin.is_empty() {
        return Ok(l);
    }
    let mut cfg = l.to_config();
    cfg.pin.extend(pin);
    TensorLayout::new(l.mesh().clone(), l.shape(), &cfg)
}
