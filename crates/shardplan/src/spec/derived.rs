//! What a spec gives derivation, and a derived strategy written back as a
//! spec: the edge of [`crate::derive`], which itself knows no spec.

use crate::Strategy;
use crate::derive::DeriveRules;
use crate::spec::{MeshId, Spec, SpecError, Transfer};

/// Why a derived strategy cannot be added to its spec.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum DerivedSpecError {
    /// The derived strategy does not join the spec (another set of
    /// tensors, or a transfer from a strategy it does not have).
    #[error(transparent)]
    #[diagnostic(transparent)]
    Parts(#[from] SpecError),
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

/// The spec with the `derived` strategy added: the meshes and strategies
/// of `spec`, the mesh of `derived` (the spec's mesh `mesh` when it is
/// that one, else a mesh of the spec equal to it, else a new one called
/// `derived`, or `derived_2`, ... when that name is taken), and, with
/// `from`, the transfer `from -> derived` (without, no transfer).
///
/// # Errors
///
/// [`DerivedSpecError::NameTaken`] when the spec already has a strategy of
/// the derived strategy's name; [`DerivedSpecError::Parts`] when the
/// derived strategy does not lay out the spec's tensors.
pub fn derived_spec(
    spec: &Spec,
    from: Option<&str>,
    derived: &Strategy,
    mesh: Option<&str>,
) -> Result<Spec, DerivedSpecError> {
    let name = derived.name();
    if spec.strategy(name).is_some() {
        return Err(DerivedSpecError::NameTaken(name.to_string()));
    }
    let named = mesh.filter(|m| {
        spec.meshes()
            .get(*m)
            .is_some_and(|m| **m == **derived.mesh())
    });
    let mut out = spec.clone();
    let on = match named.or_else(|| spec.find_mesh(derived.mesh())) {
        Some(m) => MeshId::new(m),
        None => {
            let fresh = std::iter::once("derived".to_string())
                .chain((2..).map(|k| format!("derived_{k}")))
                .find(|n| !spec.meshes().contains_key(n))
                .expect("names are unbounded");
            out.add_mesh(fresh.clone(), derived.mesh().clone())?;
            MeshId::new(fresh)
        }
    };
    out.add_strategy(name.to_string(), on, derived.clone())?;
    out.set_transfer(from.map(|f| Transfer {
        from: f.to_string(),
        to: name.to_string(),
    }))?;
    Ok(out)
}
