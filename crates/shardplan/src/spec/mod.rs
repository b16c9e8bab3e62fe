//! YAML strategy specs (version 1): reading, checking, and lowering into
//! the core types. The format is described in `docs/spec.md`.
//!
//! Checking never stops at the first problem: [`parse_spec`] returns every
//! diagnostic it finds, with file, line, column, span and help. Only a
//! YAML-level error (syntax, unknown field, wrong type, duplicate key,
//! budget) stops reading, because the document has no meaning after it.

mod budget;
mod derived;
mod diag;
mod lower_derive;
mod lower_ops;
mod lower_rule;
mod raw;
mod value;
pub mod write;

pub use derived::{DerivedSpecError, derived_spec, rules_for};
pub use value::{MeshId, Spec, SpecError, StageSpec, Transfer};

/// A JSON Schema (draft 7) of the spec format, shipped as
/// `docs/spec.schema.json` for editors (the YAML language server validates
/// a spec whose first line is `# yaml-language-server:
/// $schema=<path>/spec.schema.json`). It checks the shape of a spec: keys,
/// types, dtypes; [`parse_spec`] checks everything else.
///
/// ```
/// let schema: serde_json::Value = serde_json::from_str(shardplan::spec::JSON_SCHEMA).unwrap();
/// assert_eq!(schema["required"][0], "version");
/// ```
pub const JSON_SCHEMA: &str = include_str!("schema.json");

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::pattern::{Glob, LayerPattern, PatternError};
pub use diag::{DiagCode, Severity, Span, SpecDiagnostic};
use lower_rule::*;
use raw::{
    RawDim, RawDims, RawMapEntry, RawMindSpore, RawPolicy, RawRule, RawSpec, RawSplit, RawStrategy,
    S,
};

use crate::DType;
use crate::DeviceMesh;
use crate::LayoutError;
use crate::element_count;
use crate::notation::dtensor::{self, Placement};
use crate::notation::jax::PartitionSpec;
use crate::notation::mindspore::MindSporeLayout;
use crate::{DimSplit, LayoutConfig, SplitPolicy, TensorLayout};
use crate::{Strategy, TensorInfo};

/// Limits on what a spec may ask for. Inputs beyond them are refused with a
/// [`DiagCode::Budget`] diagnostic instead of exhausting memory or time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecBudget {
    /// Bytes of YAML text.
    pub max_bytes: usize,
    /// Nesting depth of sequences and mappings.
    pub max_depth: usize,
    /// YAML nodes (scalars, sequences, mappings), aliases expanded.
    pub max_nodes: usize,
    /// Alias uses (`*name`).
    pub max_aliases: usize,
    /// Tensors.
    pub max_tensors: usize,
    /// Rules of one strategy.
    pub max_rules: usize,
}

/// The budget [`parse_spec`] applies: far above a 1000-layer model's spec.
pub const DEFAULT_BUDGET: SpecBudget = SpecBudget {
    max_bytes: 16 << 20,
    max_depth: 32,
    max_nodes: 1_000_000,
    max_aliases: 1_000,
    max_tensors: 100_000,
    max_rules: 10_000,
};

/// Reads and checks a spec. Returns the spec when there is no error, and
/// every diagnostic (warnings included) in file order.
///
/// # Example
///
/// ```
/// let yaml = "
/// version: 1
/// meshes: {m: {shape: [2], axes: [tp]}}
/// tensors: [{name: w, shape: [4, 6], dtype: f32}]
/// strategies:
///   s: {mesh: m, rules: [{match: '*', dims: [tp, null]}]}
///   bad: {mesh: m, rules: [{match: '*', dims: [null, xp]}]}
/// ";
/// let (spec, diags) = shardplan::spec::parse_spec("x.yaml", yaml);
/// assert!(spec.is_none());
/// assert_eq!(diags[0].code.short(), "unknown_axis");
/// assert_eq!((diags[0].line, diags[0].column), (7, 52));
/// ```
pub fn parse_spec(file: &str, text: &str) -> (Option<Spec>, Vec<SpecDiagnostic>) {
    parse_spec_with_budget(file, text, &DEFAULT_BUDGET)
}

/// [`parse_spec`] on the bytes of a file: bytes that are not UTF-8 text
/// give one [`DiagCode::Encoding`] error naming the byte offset.
///
/// # Example
///
/// ```
/// use shardplan::spec::{DiagCode, parse_spec_bytes};
///
/// let (spec, diags) = parse_spec_bytes("garbage.yaml", b"version: 1\n\xff\xfe");
/// assert!(spec.is_none());
/// assert_eq!(diags[0].code, DiagCode::Encoding);
/// assert_eq!((diags[0].line, diags[0].column), (2, 1));
/// ```
pub fn parse_spec_bytes(file: &str, bytes: &[u8]) -> (Option<Spec>, Vec<SpecDiagnostic>) {
    match std::str::from_utf8(bytes) {
        Ok(text) => parse_spec(file, text),
        Err(e) => {
            let at = e.valid_up_to();
            // The valid prefix is shown; the offset names the first bad byte.
            let prefix = std::str::from_utf8(&bytes[..at]).unwrap_or_default();
            let mut cx = Cx {
                file: file.to_string(),
                text: Arc::new(prefix.to_string()),
                diags: Vec::new(),
            };
            cx.error(
                DiagCode::Encoding,
                Span { offset: at, len: 0 },
                format!("byte {at} (0x{:02x}) is not UTF-8 text: this is not a YAML spec", bytes[at]),
                "not text",
                "pass a YAML spec (UTF-8 text); MindSpore strategy files are read by `import` and `reshard`",
            );
            (None, cx.diags)
        }
    }
}

/// The name in `names` closest to `pattern` by edit distance (ignoring the
/// glob's `*` and `?`), for a help line.
fn closest_name<'a>(pattern: &str, names: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let plain: String = pattern
        .chars()
        .filter(|c| !matches!(c, '*' | '?'))
        .collect();
    names.min_by_key(|n| strsim::levenshtein(&plain, n))
}

/// [`parse_spec`] with an explicit budget.
pub fn parse_spec_with_budget(
    file: &str,
    text: &str,
    budget: &SpecBudget,
) -> (Option<Spec>, Vec<SpecDiagnostic>) {
    let mut cx = Cx {
        file: file.to_string(),
        text: Arc::new(text.to_string()),
        diags: Vec::new(),
    };
    if text.len() > budget.max_bytes {
        cx.error(
            DiagCode::Budget,
            Span::default(),
            format!(
                "the spec is {} bytes, over the budget of {} bytes",
                text.len(),
                budget.max_bytes
            ),
            "file too large",
            "split the spec, or check that this is the file you meant",
        );
        return (None, cx.diags);
    }
    if let Err(b) = budget::prescan(text, budget) {
        cx.error(
            DiagCode::Budget,
            b.span,
            b.message,
            "over budget",
            "write the spec out plainly: no deep nesting, no alias bombs, one document",
        );
        return (None, cx.diags);
    }
    let raw = match read_yaml(text, budget) {
        Ok(raw) => raw,
        Err(e) => {
            cx.yaml_error(&e);
            return (None, cx.diags);
        }
    };
    let spec = cx.lower(raw, budget);
    cx.diags.sort_by_key(|d| (d.span.offset, d.code));
    let ok = !cx.diags.iter().any(SpecDiagnostic::is_error);
    (spec.filter(|_| ok), cx.diags)
}

fn read_yaml(text: &str, budget: &SpecBudget) -> Result<RawSpec, serde_saphyr::Error> {
    let mut b = serde_saphyr::Budget::default();
    b.max_depth = budget.max_depth;
    b.max_nodes = budget.max_nodes;
    b.max_aliases = budget.max_aliases;
    b.max_documents = 1;
    let mut opts = serde_saphyr::Options::default();
    opts.budget = Some(b);
    opts.with_snippet = false;
    // YAML 1.2 booleans: an axis called `y` or `on` stays a name.
    opts.strict_booleans = true;
    serde_saphyr::from_str_with_options(text, opts)
}

/// The `stages:` of each strategy that lowered.
fn stage_specs<S>(raw: &RawSpec, strategies: &BTreeMap<String, S>) -> BTreeMap<String, StageSpec> {
    raw.strategies
        .iter()
        .filter(|(name, _)| strategies.contains_key(*name))
        .filter_map(|(name, rs)| {
            rs.stages.as_ref().map(|st| {
                (
                    name.clone(),
                    StageSpec {
                        axis: st.axis.value.clone(),
                        layer: st.layer.value.clone(),
                    },
                )
            })
        })
        .collect()
}

struct Cx {
    file: String,
    text: Arc<String>,
    diags: Vec<SpecDiagnostic>,
}

fn span_of<T>(s: &S<T>) -> Span {
    let sp = s.referenced.span();
    match (sp.byte_offset(), sp.byte_len()) {
        (Some(o), Some(l)) => Span {
            offset: o as usize,
            len: l as usize,
        },
        _ => Span::default(),
    }
}

impl Cx {
    fn push(
        &mut self,
        code: DiagCode,
        severity: Severity,
        span: Span,
        message: String,
        label: &str,
        help: &str,
    ) {
        let (line, column) = diag::line_col(&self.text, span.offset);
        self.diags.push(SpecDiagnostic {
            code,
            severity,
            message,
            label: label.to_string(),
            help: help.to_string(),
            span,
            file: self.file.clone(),
            line,
            column,
            source: self.text.clone(),
        });
    }

    fn error(&mut self, code: DiagCode, span: Span, message: String, label: &str, help: &str) {
        self.push(code, Severity::Error, span, message, label, help);
    }

    /// The dtype `s` names, for `what` (e.g. ``tensor `w` ``); `None` when
    /// it names none (reported).
    fn dtype(&mut self, what: &str, s: &S<String>) -> Option<DType> {
        let dtype = s.value.parse::<DType>().ok();
        if dtype.is_none() {
            let names: Vec<&str> = DType::ALL.iter().map(|d| d.name()).collect();
            self.error(
                DiagCode::UnknownDType,
                span_of(s),
                format!("{what} has unknown dtype `{}`", s.value),
                "unknown dtype",
                &format!("use one of: {}", names.join(", ")),
            );
        }
        dtype
    }

    fn yaml_error(&mut self, e: &serde_saphyr::Error) {
        use serde_saphyr::Error as E;
        let inner = e.without_snippet();
        let (code, label, help) = match inner {
            E::SerdeUnknownField { .. } => (
                DiagCode::UnknownField,
                "unknown field",
                "remove the field or fix its spelling; docs/spec.md lists every field",
            ),
            E::SerdeMissingField { .. } => (
                DiagCode::MissingField,
                "in this mapping",
                "add the missing field; docs/spec.md lists the required ones",
            ),
            E::DuplicateMappingKey { .. } => (
                DiagCode::DuplicateKey,
                "second occurrence",
                "each key may appear once in a mapping; remove or merge the duplicate",
            ),
            E::Budget { .. }
            | E::AliasReplayLimitExceeded { .. }
            | E::AliasExpansionLimitExceeded { .. }
            | E::AliasReplayStackDepthExceeded { .. }
            | E::MultipleDocuments { .. } => (
                DiagCode::Budget,
                "over budget",
                "the spec nests too deeply, has too many nodes or aliases, or several documents; write it out plainly",
            ),
            E::SerdeInvalidType { .. }
            | E::SerdeInvalidValue { .. }
            | E::SerdeInvalidLength { .. }
            | E::SerdeUnknownVariant { .. }
            | E::InvalidScalar { .. }
            | E::NullIntoString { .. }
            | E::InvalidBooleanStrict { .. }
            | E::Unexpected { .. }
            | E::Message { .. } => (
                DiagCode::WrongType,
                "wrong type",
                "check the value against docs/spec.md: sizes are integers, names are strings, lists use [..]",
            ),
            _ => (
                DiagCode::Syntax,
                "here",
                "fix the YAML syntax (indentation, brackets, quotes)",
            ),
        };
        let span = inner.location().map_or(Span::default(), |loc| {
            let sp = loc.span();
            match (sp.byte_offset(), sp.byte_len()) {
                (Some(o), Some(l)) => Span {
                    offset: o as usize,
                    len: l as usize,
                },
                _ => Span {
                    offset: self
                        .text
                        .char_indices()
                        .nth(sp.offset() as usize)
                        .map_or(self.text.len(), |(b, _)| b),
                    len: 0,
                },
            }
        });
        let mut message = match inner {
            E::DuplicateMappingKey { key: Some(k), .. } => format!("duplicate key `{k}`"),
            E::DuplicateMappingKey { key: None, .. } => "duplicate key".to_string(),
            _ => inner.to_string(),
        };
        // The location is reported separately.
        if let Some(i) = message.rfind(" at line ") {
            message.truncate(i);
        }
        self.error(code, span, message, label, help);
    }

    fn lower(&mut self, raw: RawSpec, budget: &SpecBudget) -> Option<Spec> {
        if raw.version.value != 1 {
            self.error(
                DiagCode::Version,
                span_of(&raw.version),
                format!("spec version {} is not supported", raw.version.value),
                "unsupported version",
                "this shardplan reads `version: 1`",
            );
            return None;
        }
        let meshes = self.lower_meshes(&raw);
        let tensors = self.lower_tensors(&raw, budget)?;
        let mut strategies = BTreeMap::new();
        let mut decided_by = BTreeMap::new();
        let mut optimizer_shards = BTreeMap::new();
        let mut strategy_meshes = BTreeMap::new();
        for (name, rs) in &raw.strategies {
            if let Some((s, d, o)) = self.lower_strategy(name, rs, &meshes, &tensors, budget) {
                strategy_meshes.insert(name.clone(), MeshId::new(rs.mesh.value.clone()));
                strategies.insert(name.clone(), s);
                decided_by.insert(name.clone(), d);
                optimizer_shards.insert(name.clone(), o);
            }
        }
        let transfer = self.lower_transfer(&raw);
        let derive = raw
            .derive
            .as_ref()
            .and_then(|d| self.lower_derive(d, &meshes));
        let operators = raw
            .operators
            .as_ref()
            .and_then(|o| self.lower_operators(o, &tensors));
        let stages = stage_specs(&raw, &strategies);
        let meshes: BTreeMap<String, Arc<DeviceMesh>> = meshes
            .into_iter()
            .filter_map(|(k, v)| v.map(|m| (k, m)))
            .collect();
        Some(Spec {
            derive,
            operators,
            stages,
            optimizer_shards,
            tensors: tensors.into_iter().map(|(t, _)| t).collect(),
            order: value::Order {
                meshes: meshes.keys().cloned().collect(),
                strategies: strategies.keys().cloned().collect(),
            },
            meshes,
            strategies,
            strategy_meshes,
            decided_by,
            transfer,
        })
    }

    /// The default transfer; each end that names no strategy of the spec
    /// is reported.
    fn lower_transfer(&mut self, raw: &RawSpec) -> Option<Transfer> {
        let t = raw.transfer.as_ref()?;
        for end in [&t.from, &t.to] {
            if !raw.strategies.contains_key(&end.value) {
                let known: Vec<&str> = raw.strategies.keys().map(String::as_str).collect();
                self.error(
                    DiagCode::UnknownStrategy,
                    span_of(end),
                    format!(
                        "transfer names strategy `{}`, which the spec does not define",
                        end.value
                    ),
                    "unknown strategy",
                    &format!("defined strategies: {}", known.join(", ")),
                );
            }
        }
        Some(Transfer {
            from: t.from.value.clone(),
            to: t.to.value.clone(),
        })
    }

    fn lower_meshes(&mut self, raw: &RawSpec) -> BTreeMap<String, Option<Arc<DeviceMesh>>> {
        let mut out = BTreeMap::new();
        for (name, m) in &raw.meshes {
            let shape: Vec<u64> = m.shape.value.iter().map(|s| s.value).collect();
            let axes: Vec<&str> = m.axes.value.iter().map(|s| s.value.as_str()).collect();
            if shape.len() != axes.len() {
                self.error(
                    DiagCode::MeshShapeMismatch,
                    span_of(&m.axes),
                    format!(
                        "mesh `{name}` has {} sizes in `shape` but {} names in `axes`",
                        shape.len(),
                        axes.len()
                    ),
                    &format!("{} names", axes.len()),
                    "give one axis name per entry of shape, outermost first",
                );
                out.insert(name.clone(), None);
                continue;
            }
            let mesh =
                DeviceMesh::new(axes.iter().copied().zip(shape.iter().copied())).and_then(|mesh| {
                    match &m.devices {
                        Some(ids) => mesh.with_device_ids(ids.value.clone()),
                        None => Ok(mesh),
                    }
                });
            match mesh {
                Ok(mesh) => {
                    out.insert(name.clone(), Some(Arc::new(mesh)));
                }
                Err(e) => {
                    let span = match &e {
                        LayoutError::DeviceIdCount { .. }
                        | LayoutError::DuplicateDeviceId { .. } => {
                            m.devices.as_ref().map_or(span_of(&m.shape), span_of)
                        }
                        LayoutError::ZeroAxis { axis }
                        | LayoutError::DuplicateMeshAxis { axis } => m
                            .axes
                            .value
                            .iter()
                            .rev()
                            .find(|a| &a.value == axis)
                            .map_or(span_of(&m.axes), span_of),
                        _ => span_of(&m.shape),
                    };
                    self.error(
                        DiagCode::InvalidMesh,
                        span,
                        format!("mesh `{name}`: {e}"),
                        "invalid mesh",
                        &miette_help(&e),
                    );
                    out.insert(name.clone(), None);
                }
            }
        }
        out
    }

    /// Tensors with the span of their name.
    fn lower_tensors(
        &mut self,
        raw: &RawSpec,
        budget: &SpecBudget,
    ) -> Option<Vec<(TensorInfo, Span)>> {
        if raw.tensors.len() > budget.max_tensors {
            self.error(
                DiagCode::Budget,
                raw.tensors
                    .first()
                    .map_or(Span::default(), |t| span_of(&t.name)),
                format!(
                    "the spec lists {} tensors, over the budget of {}",
                    raw.tensors.len(),
                    budget.max_tensors
                ),
                "too many tensors",
                "split the model into several specs",
            );
            return None;
        }
        let mut seen: HashMap<&str, Span> = HashMap::new();
        let mut out = Vec::with_capacity(raw.tensors.len());
        for t in &raw.tensors {
            let name_span = span_of(&t.name);
            if let Some(first) = seen.get(t.name.value.as_str()) {
                let (line, _) = diag::line_col(&self.text, first.offset);
                self.error(
                    DiagCode::DuplicateTensor,
                    name_span,
                    format!(
                        "tensor `{}` is declared twice (first on line {line})",
                        t.name.value
                    ),
                    "second declaration",
                    "remove one of the declarations; tensor names are unique",
                );
                continue;
            }
            seen.insert(&t.name.value, name_span);
            let Some(dtype) = self.dtype(&format!("tensor `{}`", t.name.value), &t.dtype) else {
                continue;
            };
            if let Err(e) = element_count(&t.shape.value) {
                self.error(
                    DiagCode::ShapeOverflow,
                    span_of(&t.shape),
                    format!("tensor `{}`: {e}", t.name.value),
                    "shape too large",
                    "check the shape for a typo",
                );
                continue;
            }
            out.push((
                TensorInfo {
                    name: t.name.value.clone(),
                    shape: t.shape.value.clone(),
                    dtype,
                },
                name_span,
            ));
        }
        Some(out)
    }

    /// Rules no tensor reached: a glob matching no tensor name is an error
    /// (a typo: the tensor meant gets another rule's layout), one whose
    /// tensors earlier rules all took is a warning. False after an error.
    fn report_unused_rules(
        &mut self,
        name: &str,
        rs: &RawStrategy,
        tensors: &[(TensorInfo, Span)],
        used: &[bool],
    ) -> bool {
        let mut ok = true;
        for (i, r) in rs.rules.value.iter().enumerate() {
            let Some(glob) = Glob::new(&r.pattern.value).ok().filter(|_| !used[i]) else {
                continue;
            };
            if !tensors.iter().any(|(t, _)| glob.matches(&t.name)) {
                // Matching no name at all is a typo, not a shadowed rule:
                // the tensor meant gets another rule's layout silently.
                let help = match closest_name(
                    &r.pattern.value,
                    tensors.iter().map(|(t, _)| t.name.as_str()),
                ) {
                    Some(near) => format!(
                        "the closest tensor name is `{near}`; fix the glob, or remove the rule"
                    ),
                    None => "the spec has no tensors; remove the rule".to_string(),
                };
                self.error(
                    DiagCode::NoSuchTensor,
                    span_of(&r.pattern),
                    format!(
                        "rule `{}` of strategy `{name}` matches no tensor name",
                        r.pattern.value
                    ),
                    "matches no tensor",
                    &help,
                );
                ok = false;
            } else {
                self.push(
                DiagCode::UnusedRule,
                Severity::Warning,
                span_of(&r.pattern),
                format!(
                    "rule `{}` of strategy `{name}` is never used: earlier rules match every tensor it matches",
                    r.pattern.value
                ),
                "shadowed",
                "earlier rules match every tensor it matches: reorder the rules, or remove this one",
            );
            }
        }
        ok
    }

    fn lower_strategy(
        &mut self,
        name: &str,
        rs: &RawStrategy,
        meshes: &BTreeMap<String, Option<Arc<DeviceMesh>>>,
        tensors: &[(TensorInfo, Span)],
        budget: &SpecBudget,
    ) -> Option<(Strategy, Vec<usize>, BTreeMap<String, u64>)> {
        let mesh = self.strategy_mesh(name, rs, meshes)?;
        if !self.check_rule_budget(name, rs, budget) {
            return None;
        }
        let stages = rs
            .stages
            .as_ref()
            .and_then(|st| self.lower_stages(name, st, &mesh));
        let rules: Vec<Option<Rule>> = rs
            .rules
            .value
            .iter()
            .map(|r| self.lower_rule(name, r, &mesh, stages.as_ref()))
            .collect();
        let d = self.decide(name, rs, &rules, &mesh, stages.as_ref(), tensors);
        let used_ok = self.report_unused_rules(name, rs, tensors, &d.used);
        if !(d.ok && used_ok) || rules.iter().any(Option::is_none) {
            return None;
        }
        let optimizer_shards = optimizer_shards(tensors, &d.decided, &rules);
        let infos = tensors.iter().map(|(t, _)| t.clone()).collect();
        match Strategy::new(name, mesh, infos, d.layouts) {
            Ok(s) => Some((s, d.decided, optimizer_shards)),
            Err(e) => {
                self.error(
                    DiagCode::Notation,
                    span_of(&rs.mesh),
                    e.to_string(),
                    "here",
                    "the layout must span the strategy's mesh",
                );
                None
            }
        }
    }

    /// The mesh the strategy names; `None` when it is unknown (reported)
    /// or failed to lower (reported already).
    fn strategy_mesh(
        &mut self,
        name: &str,
        rs: &RawStrategy,
        meshes: &BTreeMap<String, Option<Arc<DeviceMesh>>>,
    ) -> Option<Arc<DeviceMesh>> {
        match meshes.get(&rs.mesh.value) {
            Some(m) => m.clone(),
            None => {
                let known: Vec<&str> = meshes.keys().map(String::as_str).collect();
                self.error(
                    DiagCode::UnknownMesh,
                    span_of(&rs.mesh),
                    format!(
                        "strategy `{name}` uses mesh `{}`, which the spec does not define",
                        rs.mesh.value
                    ),
                    "unknown mesh",
                    &format!("defined meshes: {}", known.join(", ")),
                );
                None
            }
        }
    }

    /// The strategy's rules are within the budget.
    fn check_rule_budget(&mut self, name: &str, rs: &RawStrategy, budget: &SpecBudget) -> bool {
        if rs.rules.value.len() <= budget.max_rules {
            return true;
        }
        self.error(
            DiagCode::Budget,
            span_of(&rs.rules),
            format!(
                "strategy `{name}` has {} rules, over the budget of {}",
                rs.rules.value.len(),
                budget.max_rules
            ),
            "too many rules",
            "use globs and a `stages` section instead of a rule per tensor",
        );
        false
    }

    /// Each tensor's layout by the first rule that matches it, reporting
    /// tensors no rule matches and layouts that fail.
    fn decide(
        &mut self,
        name: &str,
        rs: &RawStrategy,
        rules: &[Option<Rule>],
        mesh: &Arc<DeviceMesh>,
        stages: Option<&Stages>,
        tensors: &[(TensorInfo, Span)],
    ) -> Decisions {
        let broken_glob = rs
            .rules
            .value
            .iter()
            .any(|r| Glob::new(&r.pattern.value).is_err());
        let mut d = Decisions {
            layouts: Vec::with_capacity(tensors.len()),
            decided: Vec::with_capacity(tensors.len()),
            used: vec![false; rules.len()],
            ok: true,
        };
        // Per-tensor failures of one rule are reported once, with a count.
        let mut failures: BTreeMap<(usize, DiagCode, usize), (Failure, usize)> = BTreeMap::new();
        for (t, t_span) in tensors {
            let hit = rs
                .rules
                .value
                .iter()
                .zip(rules)
                .position(|(r, compiled)| match compiled {
                    Some(c) => c.glob.matches(&t.name),
                    None => Glob::new(&r.pattern.value).is_ok_and(|g| g.matches(&t.name)),
                });
            let Some(i) = hit else {
                d.ok = false;
                // With a broken pattern (reported), what it would have
                // matched is unknown.
                if !broken_glob {
                    self.report_unmatched(name, t, *t_span);
                }
                continue;
            };
            d.used[i] = true;
            d.decided.push(i);
            let Some(rule) = &rules[i] else {
                d.ok = false;
                continue;
            };
            match rule.layout_for(t, mesh, stages) {
                Ok(l) => d.layouts.push(l),
                Err(f) => {
                    d.ok = false;
                    let key = (i, f.code, f.span.offset);
                    failures.entry(key).or_insert((f, 0)).1 += 1;
                }
            }
        }
        self.report_failures(name, failures);
        d
    }

    fn report_unmatched(&mut self, name: &str, t: &TensorInfo, span: Span) {
        self.error(
            DiagCode::UnmatchedTensor,
            span,
            format!("no rule of strategy `{name}` matches tensor `{}`", t.name),
            &format!("not covered by strategy `{name}`"),
            "add a rule whose `match` glob covers it, e.g. a last rule {match: \"*\", dims: replicated}",
        );
    }

    /// Each rule's failures once, with the count of tensors it failed.
    fn report_failures(
        &mut self,
        name: &str,
        failures: BTreeMap<(usize, DiagCode, usize), (Failure, usize)>,
    ) {
        for ((_, code, _), (f, count)) in failures {
            let more = if count > 1 {
                format!(" (and {} more tensors)", count - 1)
            } else {
                String::new()
            };
            self.error(
                code,
                f.span,
                format!("strategy `{name}`: {}{more}", f.message),
                &f.label,
                &f.help,
            );
        }
    }
}

fn miette_help(e: &dyn miette::Diagnostic) -> String {
    e.help().map(|h| h.to_string()).unwrap_or_default()
}

/// What a strategy's rules decide for its tensors.
struct Decisions {
    /// The layout of each tensor laid out, in order.
    layouts: Vec<TensorLayout>,
    /// The rule deciding each tensor matched, in order.
    decided: Vec<usize>,
    /// Per rule, whether it matched a tensor.
    used: Vec<bool>,
    /// Every tensor matched and laid out.
    ok: bool,
}

/// The optimizer shard each `mindspore` rule states: the layout alone
/// cannot tell it from a tensor-map split of a whole axis.
fn optimizer_shards(
    tensors: &[(TensorInfo, Span)],
    decided: &[usize],
    rules: &[Option<Rule>],
) -> BTreeMap<String, u64> {
    tensors
        .iter()
        .zip(decided)
        .filter_map(|((t, _), &i)| match &rules[i].as_ref()?.form {
            Form::MindSpore(ms, _) => {
                Some((t.name.clone(), ms.opt_shard_group_size().unwrap_or(1)))
            }
            _ => None,
        })
        .collect()
}

/// Names of the spec's tensors that match `pattern` (`*` and `?` globs), in
/// declaration order.
///
/// # Errors
///
/// The [`PatternError`] of an empty or malformed pattern.
pub fn select_tensors(spec: &Spec, pattern: &str) -> Result<Vec<String>, PatternError> {
    let g = Glob::new(pattern)?;
    Ok(spec
        .tensors
        .iter()
        .filter(|t| g.matches(&t.name))
        .map(|t| t.name.clone())
        .collect())
}
