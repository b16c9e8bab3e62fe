//! What a spec gives derivation, and a derived strategy written back as a
//! spec: the edge of [`crate::derive`], which itself knows no spec.

use crate::Strategy;
use crate::derive::DeriveRules;
use crate::spec::Spec;
use crate::spec::write::{StrategyOut, WriteError, write_spec};

/// Why a derived strategy cannot be written as a spec.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum DerivedSpecError {
    /// The derived spec could not be written.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Write(#[from] WriteError),
    /// The strategy name is taken.
    #[error("the spec already has a strategy `{0}`")]
    #[diagnostic(
        code(shardplan::derive::name_taken),
        help("pick another name for the derived strategy (--name)")
    )]
    NameTaken(String),
}

/// The rules a spec gives for deriving from strategy `from`: its `derive:`
/// section, with the layer pattern and the pipeline axis of the strategy's
/// `stages` section where the section does not name them.
pub fn rules_for(spec: &Spec, from: &str) -> DeriveRules {
    let mut rules = spec.derive_rules().cloned().unwrap_or_default();
    if let Some(o) = spec.optimizer_shards(from) {
        rules.optimizer_shards = o.clone();
    }
    if let Some(st) = spec.stages(from) {
        if rules.layer.is_none() {
            rules.layer = Some(st.layer.clone());
        }
        if rules.pp_axis.is_none() {
            rules.pp_axis = Some(st.axis.clone());
        }
    }
    rules
}

/// A complete spec, as YAML: the meshes and strategies of `spec`, the
/// mesh of `derived` (kept under its name when it is a mesh of the spec,
/// else called `derived`, or `derived_2`, ... when that name is taken), the
/// `derived` strategy, and, with `from`, `transfer: {from: <from>, to:
/// <derived>}`. `comment` goes at the top. [`crate::spec::parse_spec`]
/// reads it back with the same layouts.
///
/// # Errors
///
/// [`DerivedSpecError::NameTaken`] when the spec already has a strategy of the
/// derived strategy's name; [`DerivedSpecError::Write`] for a tensor name or
/// layout the spec format cannot express.
pub fn derived_spec_yaml(
    spec: &Spec,
    from: Option<&str>,
    derived: &Strategy,
    comment: &str,
) -> Result<String, DerivedSpecError> {
    let name = derived.name();
    if spec.strategy(name).is_some() {
        return Err(DerivedSpecError::NameTaken(name.to_string()));
    }
    // The derived mesh keeps its name when the spec has it.
    let new_mesh = spec.mesh_name_of(derived.mesh()).is_none().then(|| {
        std::iter::once("derived".to_string())
            .chain((2..).map(|k| format!("derived_{k}")))
            .find(|n| !spec.meshes().contains_key(n))
            .expect("names are unbounded")
    });
    let mut out = spec.to_out(comment)?;
    let target = match &new_mesh {
        Some(n) => {
            out.meshes.push((n.as_str(), derived.mesh().clone()));
            n.as_str()
        }
        None => spec
            .mesh_name_of(derived.mesh())
            .expect("a mesh of the spec"),
    };
    out.strategies.push(StrategyOut {
        name,
        mesh: target,
        strategy: derived,
        optimizer_shards: None,
    });
    out.transfer = from.map(|f| (f, name));
    Ok(write_spec(&out)?)
}
