//! Writing specs: core meshes, tensors and strategies back to YAML that
//! [`super::parse_spec`] reads. Every tensor gets a rule of its own, so any
//! layout can be written, whatever rules produced it.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;

use crate::DeviceMesh;
use crate::Strategy;
use crate::notation::mindspore::MindSporeLayout;
use crate::{LayoutError, SplitPolicy, TensorLayout};

/// A strategy to write, with the name of the mesh it is written on.
#[derive(Debug, Clone)]
pub struct StrategyOut<'a> {
    /// Name of the strategy.
    pub name: &'a str,
    /// Name of its mesh in [`SpecOut::meshes`].
    pub mesh: &'a str,
    /// The strategy.
    pub strategy: &'a Strategy,
    /// The optimizer shard recorded per tensor (ways), written as
    /// `opt_weight_shard_size` where a layout alone would read as a split.
    pub optimizer_shards: Option<&'a BTreeMap<String, u64>>,
}

/// Everything a spec file holds.
#[derive(Debug, Clone)]
pub struct SpecOut<'a> {
    /// A comment written at the top (each line prefixed with `# `).
    pub comment: String,
    /// Meshes by name, in order.
    pub meshes: Vec<(&'a str, Arc<DeviceMesh>)>,
    /// Strategies, in order. Their tensors are the first strategy's.
    pub strategies: Vec<StrategyOut<'a>>,
    /// The default transfer.
    pub transfer: Option<(&'a str, &'a str)>,
}

/// A tensor of a strategy that no spec form can express.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, miette::Diagnostic)]
#[error("strategy `{strategy}`, tensor `{tensor}`: {fault}")]
#[diagnostic(forward(fault))]
pub struct WriteError {
    /// Strategy.
    pub strategy: String,
    /// Tensor.
    pub tensor: String,
    /// Why it cannot be written; its code and help are the error's.
    pub fault: WriteFault,
}

/// Why a tensor's layout cannot be written as a spec rule, one variant per
/// fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum WriteFault {
    /// A tensor name a rule's glob would read as a pattern.
    #[error("the name contains `*` or `?`, which a rule's glob would read as a pattern")]
    #[diagnostic(
        code(shardplan::spec::write::glob_name),
        help("rename the tensor: spec rules match names by glob")
    )]
    GlobName,
    /// A layout given box by box (a checkpoint's chunks).
    #[error(
        "the layout is given box by box (a checkpoint's chunks), which a spec rule cannot write"
    )]
    #[diagnostic(
        code(shardplan::spec::write::boxes),
        help("plan or reshard from the checkpoint itself; a spec holds layouts by mesh axes")
    )]
    Boxes,
    /// A layout on a mesh of its own that is not a MindSpore layout.
    #[error("{0}")]
    #[diagnostic(
        code(shardplan::spec::write::not_mindspore),
        help("the spec format cannot express this layout")
    )]
    NotMindSpore(LayoutError),
    /// A MindSpore layout on a stage the strategy mesh has no stage axis for.
    #[error(
        "the layout is on stage {stage} of {stage_count}, but the strategy mesh's first axis is not a stage axis of that size"
    )]
    #[diagnostic(
        code(shardplan::spec::write::stage_axis),
        help("put a stage axis of that size first in the strategy's mesh")
    )]
    StageAxis {
        /// The layout's stage.
        stage: u64,
        /// Its number of stages.
        stage_count: u64,
    },
}

/// A YAML double-quoted string (JSON escapes are valid YAML).
fn quote(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialize")
}

fn list<T: std::fmt::Display>(v: impl IntoIterator<Item = T>) -> String {
    let items: Vec<String> = v.into_iter().map(|x| x.to_string()).collect();
    format!("[{}]", items.join(", "))
}

/// The spec as YAML.
///
/// # Errors
///
/// [`WriteError`] for a tensor name a glob would read as a pattern (`*`,
/// `?`), a layout given box by box, or a layout on a mesh of its own that
/// is not a MindSpore layout.
pub fn write_spec(spec: &SpecOut<'_>) -> Result<String, WriteError> {
    // Empty collections, in every section, are written as `{}` / `[]`: a
    // bare key reads as null.
    let mut out = String::new();
    for line in spec.comment.lines() {
        let _ = writeln!(out, "# {line}");
    }
    let _ = writeln!(out, "version: 1");
    write_meshes(&mut out, &spec.meshes);
    write_tensors(&mut out, spec.strategies.first().map(|s| s.strategy));
    let empty = if spec.strategies.is_empty() {
        " {}"
    } else {
        ""
    };
    let _ = writeln!(out, "strategies:{empty}");
    for s in &spec.strategies {
        write_strategy(&mut out, s)?;
    }
    if let Some((from, to)) = spec.transfer {
        let _ = writeln!(
            out,
            "transfer: {{from: {}, to: {}}}",
            quote(from),
            quote(to)
        );
    }
    Ok(out)
}

/// The `meshes:` section, one flow mapping per mesh.
fn write_meshes(out: &mut String, meshes: &[(&str, Arc<DeviceMesh>)]) {
    let empty = if meshes.is_empty() { " {}" } else { "" };
    let _ = writeln!(out, "meshes:{empty}");
    for (name, mesh) in meshes {
        let _ = write!(
            out,
            "  {}: {{shape: {}, axes: {}",
            quote(name),
            list(mesh.shape()),
            list(mesh.axes().iter().map(|a| quote(&a.name)))
        );
        if let Some(ids) = mesh.device_ids() {
            let _ = write!(out, ", devices: {}", list(ids));
        }
        let _ = writeln!(out, "}}");
    }
}

/// The `tensors:` section: the first strategy's tensors.
fn write_tensors(out: &mut String, first: Option<&Strategy>) {
    let tensors = first.map_or(&[][..], |s| s.tensors());
    let empty = if tensors.is_empty() { " []" } else { "" };
    let _ = writeln!(out, "tensors:{empty}");
    for t in tensors {
        let _ = writeln!(
            out,
            "  - {{name: {}, shape: {}, dtype: {}}}",
            quote(&t.name),
            list(&t.shape),
            t.dtype
        );
    }
}

/// One strategy: its mesh and a rule per tensor, native on the strategy's
/// mesh, MindSpore on a mesh of the tensor's own.
fn write_strategy(out: &mut String, s: &StrategyOut<'_>) -> Result<(), WriteError> {
    let _ = writeln!(out, "  {}:", quote(s.name));
    let _ = writeln!(out, "    mesh: {}", quote(s.mesh));
    let empty = if s.strategy.tensors().is_empty() {
        " []"
    } else {
        ""
    };
    let _ = writeln!(out, "    rules:{empty}");
    for (t, l) in s.strategy.tensors().iter().zip(s.strategy.layouts()) {
        let err = |fault: WriteFault| WriteError {
            strategy: s.name.to_string(),
            tensor: t.name.clone(),
            fault,
        };
        if t.name.contains(['*', '?']) {
            return Err(err(WriteFault::GlobName));
        }
        if l.is_explicit() {
            // Written as a grid it would read back as another layout.
            return Err(err(WriteFault::Boxes));
        }
        let body = if **l.mesh() == **s.strategy.mesh() {
            native_rule(l)
        } else {
            let ways = s
                .optimizer_shards
                .and_then(|o| o.get(&t.name))
                .copied()
                .unwrap_or(1);
            mindspore_rule(l, s.strategy.mesh(), ways).map_err(err)?
        };
        let _ = writeln!(out, "      - {{match: {}, {body}}}", quote(&t.name));
    }
    Ok(())
}

/// `dims: [...]` with `split`, `partial` and `at` as needed.
fn native_rule(l: &TensorLayout) -> String {
    let cfg = l.to_config();
    let dims: Vec<String> = cfg
        .dims
        .iter()
        .map(|d| match d.axes.as_slice() {
            [] => "null".to_string(),
            [a] => quote(a),
            many => list(many.iter().map(|a| quote(a))),
        })
        .collect();
    let mut body = if dims.is_empty() && cfg.partial.is_empty() {
        // A scalar: no dimension to list.
        "dims: []".to_string()
    } else {
        format!("dims: [{}]", dims.join(", "))
    };
    if cfg.dims.iter().any(|d| d.policy != SplitPolicy::Even) {
        let split: Vec<String> = cfg
            .dims
            .iter()
            .map(|d| match &d.policy {
                SplitPolicy::Even => "even".to_string(),
                SplitPolicy::Chunk => "chunk".to_string(),
                SplitPolicy::Balanced => "balanced".to_string(),
                SplitPolicy::Blocks(b) => format!("{{blocks: {}}}", list(b)),
            })
            .collect();
        let _ = write!(body, ", split: [{}]", split.join(", "));
    }
    if !cfg.partial.is_empty() {
        let _ = write!(
            body,
            ", partial: {}",
            list(cfg.partial.iter().map(|a| quote(a)))
        );
    }
    if !cfg.pin.is_empty() {
        // Axes in first-seen order; several coordinates become a list.
        let mut axes: Vec<(&str, Vec<u64>)> = Vec::new();
        for (a, c) in &cfg.pin {
            match axes.iter_mut().find(|(n, _)| n == a) {
                Some((_, cs)) => cs.push(*c),
                None => axes.push((a, vec![*c])),
            }
        }
        let pins: Vec<String> = axes
            .iter()
            .map(|(a, cs)| match cs.as_slice() {
                [c] => format!("{}: {c}", quote(a)),
                _ => format!("{}: {}", quote(a), list(cs.iter().map(u64::to_string))),
            })
            .collect();
        let _ = write!(body, ", at: {{{}}}", pins.join(", "));
    }
    body
}

/// A layout on a mesh of its own, written in MindSpore notation; its stage
/// becomes a pin on the strategy mesh's first axis (a list for a tensor on
/// several stages, each cut alike).
fn mindspore_rule(
    l: &TensorLayout,
    strategy_mesh: &DeviceMesh,
    ways: u64,
) -> Result<String, WriteFault> {
    let per_stage = l.split_pins();
    let ms = MindSporeLayout::from_layout_with_shard(&per_stage[0], ways)
        .map_err(WriteFault::NotMindSpore)?;
    let tm: Vec<String> = ms
        .tensor_map
        .iter()
        .map(|e| match e.as_slice() {
            [k] => k.to_string(),
            many => list(many),
        })
        .collect();
    let mut body = format!(
        "mindspore: {{dev_matrix: {}, tensor_map: [{}]",
        list(&ms.dev_matrix),
        tm.join(", ")
    );
    if ms.opt_weight_shard_size > 1 {
        let _ = write!(
            body,
            ", opt_weight_shard_size: {}, opt_weight_shard_step: {}",
            ms.opt_weight_shard_size, ms.opt_weight_shard_step
        );
    }
    if !ms.param_split_shape.is_empty() {
        let _ = write!(body, ", param_split_shape: {}", list(&ms.param_split_shape));
    }
    body.push('}');
    if ms.stage_count > 1 {
        let first = strategy_mesh
            .axes()
            .first()
            .filter(|a| a.size == ms.stage_count)
            .ok_or(WriteFault::StageAxis {
                stage: ms.stage,
                stage_count: ms.stage_count,
            })?;
        let stages: Vec<u64> = match per_stage.len() {
            1 => vec![ms.stage],
            _ => l.pin().iter().map(|&(_, c)| c).collect(),
        };
        let at = match stages.as_slice() {
            [one] => one.to_string(),
            many => list(many),
        };
        let _ = write!(body, ", at: {{{}: {at}}}", quote(&first.name));
    }
    Ok(body)
}
