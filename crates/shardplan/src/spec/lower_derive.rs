//! Lowering the `derive:` section: each check its own function, every
//! problem reported, the rules returned only when all of them pass.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::raw::{self, RawDerive, S};
use super::{Cx, DiagCode, Span, diag, span_of};
use crate::DeviceMesh;
use crate::derive::{DeriveRules, Fallback, LayerRef, SharedTensors};
use crate::pattern::{Glob, LayerPattern};

impl Cx {
    /// Checks the `derive:` section: axes on some mesh and with one role,
    /// a known fallback, a layer pattern, ranges and globs.
    pub(super) fn lower_derive(
        &mut self,
        d: &S<RawDerive>,
        meshes: &BTreeMap<String, Option<Arc<DeviceMesh>>>,
    ) -> Option<DeriveRules> {
        let raw = &d.value;
        // Every check runs, so that each problem is reported.
        let axes_ok = self.check_derive_axes(raw, meshes);
        let fallback = self.derive_fallback(raw);
        let layer_ok = self.check_derive_layer(raw);
        let ranges_ok = self.check_derive_ranges(raw);
        let globs_ok = self.check_derive_globs(raw);
        let shared = self.derive_shared(raw);
        let (fallback, shared) = (fallback?, shared?);
        if !(axes_ok && layer_ok && ranges_ok && globs_ok) {
            return None;
        }
        let names = |v: &[S<String>]| v.iter().map(|a| a.value.clone()).collect();
        Some(DeriveRules {
            tp_axes: names(&raw.tp_axes),
            dp_axes: names(&raw.dp_axes),
            pp_axis: raw.pp_axis.as_ref().map(|a| a.value.clone()),
            fallback,
            layer: raw.layer.as_ref().map(|l| l.value.clone()),
            ranges: raw
                .ranges
                .as_ref()
                .map(|r| r.value.iter().map(|w| w.value).collect()),
            shared,
            replicate: names(&raw.replicate),
            optimizer_shards: BTreeMap::new(),
        })
    }

    /// Each role's axes are on some mesh of the spec, and no axis has two
    /// roles.
    fn check_derive_axes(
        &mut self,
        raw: &RawDerive,
        meshes: &BTreeMap<String, Option<Arc<DeviceMesh>>>,
    ) -> bool {
        let mut ok = true;
        // An axis may be on a mesh that failed to lower; then it is not
        // reported as unknown.
        let all_meshes_ok = meshes.values().all(Option::is_some);
        let mut known: Vec<&str> = meshes
            .values()
            .flatten()
            .flat_map(|m| m.axes().iter().map(|a| a.name.as_str()))
            .collect();
        known.sort_unstable();
        known.dedup();
        let mut seen: Vec<(&str, &str, Span)> = Vec::new();
        let roles = raw
            .tp_axes
            .iter()
            .map(|a| (a, "tp_axes"))
            .chain(raw.dp_axes.iter().map(|a| (a, "dp_axes")))
            .chain(raw.pp_axis.iter().map(|a| (a, "pp_axis")));
        for (axis, role) in roles {
            let span = span_of(axis);
            if all_meshes_ok && !known.contains(&axis.value.as_str()) {
                self.error(
                    DiagCode::UnknownAxis,
                    span,
                    format!("derive: axis `{}` is on no mesh of the spec", axis.value),
                    "unknown axis",
                    &format!("axes of the spec's meshes: {}", known.join(", ")),
                );
                ok = false;
            } else if let Some((_, first_role, first)) =
                seen.iter().find(|(n, _, _)| *n == axis.value.as_str())
            {
                let (line, col) = diag::line_col(&self.text, first.offset);
                self.error(
                    DiagCode::AxisReused,
                    span,
                    format!(
                        "derive: axis `{}` is in `{role}` and already in `{first_role}` (line {line}, column {col})",
                        axis.value
                    ),
                    "second role",
                    "give each axis one role: tensor-parallel, data-parallel or pipeline",
                );
                ok = false;
            } else {
                seen.push((axis.value.as_str(), role, span));
            }
        }
        ok
    }

    /// The fallback named (refuse when none is), or `None` when the name
    /// is unknown.
    fn derive_fallback(&mut self, raw: &RawDerive) -> Option<Fallback> {
        let Some(f) = &raw.fallback else {
            return Some(Fallback::Error);
        };
        match f.value.parse::<Fallback>() {
            Ok(f) => Some(f),
            Err(e) => {
                self.error(
                    DiagCode::BadPolicy,
                    span_of(f),
                    format!("derive: {e}"),
                    "unknown fallback",
                    "`fallback` is error (refuse), replicate or chunk",
                );
                None
            }
        }
    }

    /// The layer pattern, if any, has one `{}`.
    fn check_derive_layer(&mut self, raw: &RawDerive) -> bool {
        let Some(l) = &raw.layer else {
            return true;
        };
        let Err(e) = LayerPattern::new(&l.value) else {
            return true;
        };
        self.error(
            DiagCode::BadStages,
            span_of(l),
            format!("derive: layer pattern `{}`: {e}", l.value),
            "bad layer pattern",
            "write e.g. \"model.layers.{}.*\", with {} where the layer index is",
        );
        false
    }

    /// No range is empty.
    fn check_derive_ranges(&mut self, raw: &RawDerive) -> bool {
        let mut ok = true;
        for w in raw.ranges.iter().flat_map(|r| &r.value) {
            if w.value[0] > w.value[1] {
                self.error(
                    DiagCode::BadStages,
                    span_of(w),
                    format!("derive: range [{}, {}] is empty", w.value[0], w.value[1]),
                    "empty range",
                    "ranges are [first, last] layer, inclusive, one per target stage",
                );
                ok = false;
            }
        }
        ok
    }

    /// The `shared` and `replicate` patterns are globs.
    fn check_derive_globs(&mut self, raw: &RawDerive) -> bool {
        let mut ok = true;
        let shared_patterns = raw
            .shared
            .iter()
            .map(|g| (g.value.pattern.as_str(), span_of(g)));
        let replicate_patterns = raw.replicate.iter().map(|g| (g.value.as_str(), span_of(g)));
        for (g, span) in shared_patterns.chain(replicate_patterns) {
            if let Err(e) = Glob::new(g) {
                self.error(
                    DiagCode::BadPattern,
                    span,
                    format!("derive: pattern `{g}`: {e}"),
                    "bad pattern",
                    "`*` matches any characters, `?` one character",
                );
                ok = false;
            }
        }
        ok
    }

    /// The `shared` entries with their layers, or `None` when a layer is
    /// neither an index nor `first` / `last`, or a `layers` list is empty.
    fn derive_shared(&mut self, raw: &RawDerive) -> Option<Vec<SharedTensors>> {
        let mut ok = true;
        let mut shared = Vec::with_capacity(raw.shared.len());
        for g in &raw.shared {
            let mut layers = Vec::with_capacity(g.value.layers.len());
            for l in &g.value.layers {
                match self.layer_ref(g, l) {
                    Some(l) => layers.push(l),
                    None => ok = false,
                }
            }
            if g.value.layers_given && g.value.layers.is_empty() {
                self.error(
                    DiagCode::BadStages,
                    span_of(g),
                    format!("derive: shared `{}` has an empty `layers` list", g.value.pattern),
                    "no layers",
                    "name the layers that use the tensors (e.g. [first, last]), or drop `layers` to put them on every stage",
                );
                ok = false;
            }
            shared.push(SharedTensors {
                pattern: g.value.pattern.clone(),
                layers,
            });
        }
        ok.then_some(shared)
    }

    /// One layer of a `shared` entry: an index, `first` or `last`.
    fn layer_ref(&mut self, g: &S<raw::RawShared>, l: &raw::RawLayerRef) -> Option<LayerRef> {
        match l {
            raw::RawLayerRef::Index(i) => Some(LayerRef::Index(*i)),
            raw::RawLayerRef::Word(w) if w == "first" => Some(LayerRef::First),
            raw::RawLayerRef::Word(w) if w == "last" => Some(LayerRef::Last),
            raw::RawLayerRef::Word(w) => {
                self.error(
                    DiagCode::BadStages,
                    span_of(g),
                    format!("derive: shared `{}`: `{w}` is not a layer", g.value.pattern),
                    "unknown layer",
                    "name layers by index, or `first` / `last`",
                );
                None
            }
        }
    }
}
