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
mod load;
mod lower_derive;
mod lower_ops;
mod raw;
mod value;
pub mod write;

pub use derived::{DerivedSpecError, derived_spec, rules_for};
pub use load::{LoadError, SpecSource, detect, load};
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

use crate::pattern::{Glob, LayerPattern};
pub use diag::{DiagCode, Severity, Span, SpecDiagnostic};
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
        let transfer = raw.transfer.as_ref().map(|t| {
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
            Transfer {
                from: t.from.value.clone(),
                to: t.to.value.clone(),
            }
        });
        let derive = raw
            .derive
            .as_ref()
            .and_then(|d| self.lower_derive(d, &meshes));
        let operators = raw
            .operators
            .as_ref()
            .and_then(|o| self.lower_operators(o, &tensors));
        let stages = raw
            .strategies
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
            .collect();
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

    fn lower_stages(
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

    fn unknown_axis(&mut self, axis: &S<String>, mesh: &DeviceMesh) {
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
    fn lower_rule(
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
    fn rule_glob(&mut self, strategy: &str, r: &RawRule) -> Option<Glob> {
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
    fn check_rule_form(&mut self, strategy: &str, r: &RawRule) -> Option<()> {
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
    fn lower_dims(
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
    fn lower_pins(
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
    fn check_stage_axis(
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
    fn lower_policies(
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

    fn lower_policy(&mut self, p: &RawPolicy, span: Span) -> Option<SplitPolicy> {
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
    fn placements_form(
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
    fn jax_form(&mut self, s: &S<String>, axes: &mut AxisUse<'_>, ok: &mut bool) -> Option<Form> {
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
fn mindspore_form(ms: &RawMindSpore) -> MindSporeLayout {
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
struct AxisUse<'a> {
    mesh: &'a DeviceMesh,
    seen: Vec<(String, Span)>,
}

impl AxisUse<'_> {
    /// Records `axis` (at its span, or `fallback`); false, after reporting,
    /// for an axis not on the mesh or used before.
    fn check(&mut self, cx: &mut Cx, axis: &S<String>, fallback: Span) -> bool {
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

fn miette_help(e: &dyn miette::Diagnostic) -> String {
    e.help().map(|h| h.to_string()).unwrap_or_default()
}

#[derive(Debug)]
enum StageMap {
    PerStage(u64),
    Ranges(Vec<[u64; 2]>),
}

#[derive(Debug)]
struct Stages {
    axis: usize,
    axis_name: String,
    size: u64,
    pattern: LayerPattern,
    pattern_span: Span,
    map: StageMap,
}

impl Stages {
    fn stage_of(&self, layer: u64) -> Option<u64> {
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
enum Policies {
    All(SplitPolicy),
    PerDim(Vec<(SplitPolicy, Span)>),
}

#[derive(Debug)]
enum Form {
    Dims(Vec<(Vec<String>, Span)>),
    Replicated,
    MindSpore(MindSporeLayout, Span),
    Placements(Vec<Placement>, Span),
    Jax(PartitionSpec, Span),
}

#[derive(Debug)]
struct Rule {
    glob: Glob,
    form: Form,
    policies: Option<Policies>,
    partial: Vec<String>,
    pin: Vec<(String, u64)>,
    pattern: String,
    pattern_span: Span,
    dims_span: Span,
    split_span: Option<Span>,
}

/// A per-tensor failure of a rule, before it is counted and reported.
#[derive(Debug)]
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

struct Failure {
    code: DiagCode,
    span: Span,
    message: String,
    label: String,
    help: String,
}

impl Rule {
    fn layout_for(
        &self,
        t: &TensorInfo,
        mesh: &Arc<DeviceMesh>,
        stages: Option<&Stages>,
    ) -> Result<TensorLayout, Failure> {
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
        let form_span = match &self.form {
            Form::Dims(_) | Form::Replicated => self.dims_span,
            Form::MindSpore(_, s) | Form::Placements(_, s) | Form::Jax(_, s) => *s,
        };
        let fail = |e: LayoutError| self.failure(t, e, form_span);
        let with_pin = |l: TensorLayout| -> Result<TensorLayout, LayoutError> {
            if pin.is_empty() {
                return Ok(l);
            }
            let mut cfg = l.to_config();
            cfg.pin.extend(pin.iter().cloned());
            TensorLayout::new(mesh.clone(), t.shape.as_slice(), &cfg)
        };
        match &self.form {
            Form::Dims(dims) => {
                let mut cfg = LayoutConfig::new(
                    dims.iter()
                        .map(|(axes, _)| DimSplit::over(axes.iter().cloned()))
                        .collect(),
                )
                .with_partial(self.partial.clone())
                .with_pin(pin);
                match &self.policies {
                    Some(Policies::All(p)) => {
                        for d in &mut cfg.dims {
                            if !d.axes.is_empty() {
                                d.policy = p.clone();
                            }
                        }
                    }
                    Some(Policies::PerDim(v)) => {
                        for (d, (p, _)) in cfg.dims.iter_mut().zip(v) {
                            d.policy = p.clone();
                        }
                    }
                    None => {}
                }
                TensorLayout::new(mesh.clone(), &t.shape, &cfg).map_err(fail)
            }
            Form::Replicated => {
                let cfg = LayoutConfig::new(vec![DimSplit::none(); t.shape.len()]).with_pin(pin);
                TensorLayout::new(mesh.clone(), &t.shape, &cfg).map_err(fail)
            }
            Form::MindSpore(ms, span) => {
                // A MindSpore layout spans one stage: the pin, if any, must
                // be on the mesh's first axis, and the device matrix covers
                // the ranks of one stage.
                let mut ms = ms.clone();
                match pin.as_slice() {
                    [] => {}
                    [(_, c), ..] if pin.iter().all(|(a, _)| mesh.axis_index(a) == Some(0)) => {
                        // Several stages (a tied embedding): cut alike on
                        // each; the others are added after the first.
                        ms.stage = *c;
                        ms.stage_count = mesh.axis_size(0);
                    }
                    _ => {
                        return Err(Failure {
                            code: DiagCode::Notation,
                            span: *span,
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
                        span: *span,
                        message: format!(
                            "rule `{}` on tensor `{}`: dev_matrix {:?} does not span the {per_stage} ranks of a stage of mesh {mesh}",
                            self.pattern, t.name, ms.dev_matrix
                        ),
                        label: "device matrix".into(),
                        help: "the product of dev_matrix must equal the ranks per stage".into(),
                    });
                }
                let also_on: Vec<u64> = pin.iter().skip(1).map(|&(_, c)| c).collect();
                ms.to_layout_on_stages(&t.shape, &also_on).map_err(fail)
            }
            Form::Placements(p, _) => {
                // Axes pinned by `at` and the stage axis take no placement.
                let stage_axis = stages.map(|st| st.axis_name.as_str());
                let mut full = Vec::with_capacity(mesh.axes().len());
                let mut it = p.iter();
                for a in mesh.axes() {
                    let takes = !self.pin.iter().any(|(n, _)| *n == a.name)
                        && stage_axis != Some(a.name.as_str());
                    full.push(if takes {
                        *it.next().unwrap_or(&Placement::Replicate)
                    } else {
                        Placement::Replicate
                    });
                }
                dtensor::to_layout(mesh.clone(), &t.shape, &full)
                    .and_then(with_pin)
                    .map_err(fail)
            }
            Form::Jax(ps, _) => ps
                .to_layout(mesh.clone(), &t.shape)
                .and_then(with_pin)
                .map_err(fail),
        }
    }

    fn failure(&self, t: &TensorInfo, e: LayoutError, form_span: Span) -> Failure {
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

/// Names of the spec's tensors that match `pattern` (`*` and `?` globs), in
/// declaration order.
///
/// # Errors
///
/// A message when the pattern is empty or malformed.
pub fn select_tensors(spec: &Spec, pattern: &str) -> Result<Vec<String>, String> {
    let g = Glob::new(pattern)?;
    Ok(spec
        .tensors
        .iter()
        .filter(|t| g.matches(&t.name))
        .map(|t| t.name.clone())
        .collect())
}
