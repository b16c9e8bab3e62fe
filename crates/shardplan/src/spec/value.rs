//! The spec as a value: meshes by name, the tensors, strategies each on a
//! named mesh, and what the spec says about transfers and derivation.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::write;
use crate::DeviceMesh;
use crate::derive::DeriveRules;
use crate::derive::ops::OperatorGraph;
use crate::{Strategy, TensorInfo};

/// A transfer named by the spec: from one strategy to another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    /// Source strategy.
    pub from: String,
    /// Destination strategy.
    pub to: String,
}

/// The name of a mesh in a spec: how a strategy says which mesh it is on.
/// Two meshes of one shape under two names stay two meshes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MeshId(String);

impl MeshId {
    /// The mesh called `name`.
    pub fn new(name: impl Into<String>) -> MeshId {
        MeshId(name.into())
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for MeshId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for MeshId {
    fn from(name: &str) -> MeshId {
        MeshId::new(name)
    }
}

/// A checked spec: meshes by name, the tensors, strategies by name each on
/// a named mesh, and what the spec says about transfers and derivation. A
/// value: read from YAML by [`parse_spec`](super::parse_spec) or
/// [`load`](crate::import::load), built in code by [`Spec::from_parts`], written
/// back by [`Spec::to_yaml`]. The fields are private, so a `Spec` always
/// holds strategies on its own meshes and over the same tensors.
#[derive(Debug, Clone)]
pub struct Spec {
    pub(super) meshes: BTreeMap<String, Arc<DeviceMesh>>,
    pub(super) tensors: Vec<TensorInfo>,
    pub(super) strategies: BTreeMap<String, Strategy>,
    /// The mesh of each strategy, by name (a strategy's mesh may equal
    /// several of the spec's; this says which one it is on).
    pub(super) strategy_meshes: BTreeMap<String, MeshId>,
    pub(super) decided_by: BTreeMap<String, Vec<usize>>,
    pub(super) transfer: Option<Transfer>,
    pub(super) derive: Option<DeriveRules>,
    pub(super) operators: Option<OperatorGraph>,
    pub(super) stages: BTreeMap<String, StageSpec>,
    pub(super) optimizer_shards: BTreeMap<String, BTreeMap<String, u64>>,
    /// Mesh and strategy names in the order they joined the spec, which
    /// is the order they are written in.
    pub(super) order: Order,
}

/// Names in the order they joined a spec.
#[derive(Debug, Clone, Default)]
pub(super) struct Order {
    pub(super) meshes: Vec<String>,
    pub(super) strategies: Vec<String>,
}

/// A spec that [`Spec::from_parts`] cannot build.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum SpecError {
    /// A strategy on a mesh name that is none of the spec's meshes.
    #[error("strategy `{strategy}` is on mesh `{mesh}`, which the spec does not have")]
    #[diagnostic(
        code(shardplan::spec::parts::unknown_mesh),
        help("add the mesh to the meshes under that name, or name one of them")
    )]
    UnknownMesh {
        /// The strategy.
        strategy: String,
        /// The mesh it names.
        mesh: MeshId,
    },
    /// A strategy whose mesh is not the mesh it names.
    #[error("strategy `{strategy}` names mesh `{mesh}` but is on {actual}")]
    #[diagnostic(
        code(shardplan::spec::parts::mesh_differs),
        help("name the mesh the strategy's layouts are on")
    )]
    MeshDiffers {
        /// The strategy.
        strategy: String,
        /// The mesh it names.
        mesh: MeshId,
        /// The mesh it is on.
        actual: String,
    },
    /// Two strategies lay out different tensors.
    #[error("strategies `{first}` and `{other}` lay out different tensors")]
    #[diagnostic(
        code(shardplan::spec::parts::tensors_differ),
        help(
            "every strategy of a spec lays out the same tensors, with the same shapes and dtypes"
        )
    )]
    TensorsDiffer {
        /// The first strategy.
        first: String,
        /// The one that differs.
        other: String,
    },
    /// A name is used twice.
    #[error("the name `{0}` is given twice")]
    #[diagnostic(
        code(shardplan::spec::parts::duplicate_name),
        help("give each mesh and each strategy its own name")
    )]
    DuplicateName(String),
    /// The transfer names a strategy the spec does not have.
    #[error("the transfer names strategy `{0}`, which the spec does not have")]
    #[diagnostic(
        code(shardplan::spec::parts::unknown_strategy),
        help("name one of the spec's strategies")
    )]
    UnknownStrategy(String),
}

impl Spec {
    /// A spec of `meshes` and `strategies` (each with the name of its
    /// mesh), with an optional default transfer.
    ///
    /// # Errors
    ///
    /// [`SpecError`] for a strategy on a mesh not given or not the one it
    /// names, strategies over different tensors, a name given twice, or a
    /// transfer to a strategy not given.
    ///
    /// # Example
    ///
    /// ```
    /// use std::sync::Arc;
    /// use shardplan::spec::{MeshId, Spec, Transfer};
    /// use shardplan::*;
    ///
    /// let m = Arc::new(DeviceMesh::new([("tp", 2)]).unwrap());
    /// let t = TensorInfo { name: "w".into(), shape: vec![4], dtype: DType::F32 };
    /// let whole = TensorLayout::replicated(m.clone(), &t.shape).unwrap();
    /// let s = Strategy::new("s", m.clone(), vec![t], vec![whole]).unwrap();
    /// let spec = Spec::from_parts(
    ///     vec![("m".into(), m)],
    ///     vec![("s".into(), MeshId::new("m"), s.clone())],
    ///     None,
    /// )
    /// .unwrap();
    /// assert_eq!(spec.mesh_of("s"), Some(&MeshId::new("m")));
    /// let yaml = spec.to_yaml("an example").unwrap();
    /// let (back, _) = shardplan::spec::parse_spec("back.yaml", &yaml);
    /// assert_eq!(back.unwrap().strategy("s").unwrap().layouts(), s.layouts());
    /// // A transfer to a strategy the spec does not have is refused.
    /// let to = Transfer { from: "s".into(), to: "t".into() };
    /// let parts = vec![("s".into(), MeshId::new("m"), s)];
    /// assert!(Spec::from_parts(spec.meshes().clone().into_iter().collect(), parts, Some(to)).is_err());
    /// ```
    pub fn from_parts(
        meshes: Vec<(String, Arc<DeviceMesh>)>,
        strategies: Vec<(String, MeshId, Strategy)>,
        transfer: Option<Transfer>,
    ) -> Result<Spec, SpecError> {
        let mut spec = Spec {
            meshes: BTreeMap::new(),
            tensors: Vec::new(),
            strategies: BTreeMap::new(),
            strategy_meshes: BTreeMap::new(),
            decided_by: BTreeMap::new(),
            transfer: None,
            derive: None,
            operators: None,
            stages: BTreeMap::new(),
            optimizer_shards: BTreeMap::new(),
            order: Order::default(),
        };
        for (n, m) in meshes {
            spec.add_mesh(n, m)?;
        }
        for (n, on, s) in strategies {
            spec.add_strategy(n, on, s)?;
        }
        spec.set_transfer(transfer)?;
        Ok(spec)
    }

    /// Adds mesh `name`.
    pub(super) fn add_mesh(
        &mut self,
        name: String,
        mesh: Arc<DeviceMesh>,
    ) -> Result<(), SpecError> {
        if self.meshes.contains_key(&name) {
            return Err(SpecError::DuplicateName(name));
        }
        self.order.meshes.push(name.clone());
        self.meshes.insert(name, mesh);
        Ok(())
    }

    /// Adds strategy `name` on the mesh called `mesh`: the one place a
    /// strategy joins a spec built in code, so every such spec keeps its
    /// invariants.
    pub(super) fn add_strategy(
        &mut self,
        name: String,
        mesh: MeshId,
        strategy: Strategy,
    ) -> Result<(), SpecError> {
        let Some(m) = self.meshes.get(mesh.as_str()) else {
            return Err(SpecError::UnknownMesh {
                strategy: name,
                mesh,
            });
        };
        if **m != **strategy.mesh() {
            return Err(SpecError::MeshDiffers {
                strategy: name,
                mesh,
                actual: strategy.mesh().to_string(),
            });
        }
        if let Some((first, _)) = self.strategies.iter().next() {
            if self.tensors.as_slice() != strategy.tensors() {
                return Err(SpecError::TensorsDiffer {
                    first: first.clone(),
                    other: name,
                });
            }
        } else {
            self.tensors = strategy.tensors().to_vec();
        }
        if self.strategies.contains_key(&name) {
            return Err(SpecError::DuplicateName(name));
        }
        self.strategy_meshes.insert(name.clone(), mesh);
        self.order.strategies.push(name.clone());
        self.strategies.insert(name, strategy);
        Ok(())
    }

    /// Sets the default transfer, both ends being strategies of the spec.
    pub(super) fn set_transfer(&mut self, transfer: Option<Transfer>) -> Result<(), SpecError> {
        if let Some(t) = &transfer {
            for end in [&t.from, &t.to] {
                if !self.strategies.contains_key(end) {
                    return Err(SpecError::UnknownStrategy(end.clone()));
                }
            }
        }
        self.transfer = transfer;
        Ok(())
    }

    /// The spec with the optimizer shard of each tensor of strategy
    /// `strategy` recorded (tensor name to ways; what MindSpore's
    /// `opt_weight_shard_size` states and a layout alone cannot tell from a
    /// split), for derivation.
    pub fn with_optimizer_shards(mut self, strategy: &str, shards: BTreeMap<String, u64>) -> Spec {
        self.optimizer_shards.insert(strategy.to_string(), shards);
        self
    }

    /// Meshes by name.
    pub fn meshes(&self) -> &BTreeMap<String, Arc<DeviceMesh>> {
        &self.meshes
    }

    /// The name of the mesh strategy `strategy` is on.
    pub fn mesh_of(&self, strategy: &str) -> Option<&MeshId> {
        self.strategy_meshes.get(strategy)
    }

    /// The first mesh of the spec, by name, equal to `mesh` (axes and
    /// sizes): where a mesh built elsewhere, e.g. by derivation, is one
    /// the spec already has.
    pub fn find_mesh(&self, mesh: &DeviceMesh) -> Option<&str> {
        self.meshes
            .iter()
            .find(|(_, m)| ***m == *mesh)
            .map(|(n, _)| n.as_str())
    }

    /// Tensors in declaration order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// Strategies by name.
    pub fn strategies(&self) -> &BTreeMap<String, Strategy> {
        &self.strategies
    }

    /// The strategy called `name`.
    pub fn strategy(&self, name: &str) -> Option<&Strategy> {
        self.strategies.get(name)
    }

    /// For strategy `name`, the index of the rule that decided each tensor
    /// (empty for a spec built in code).
    pub fn decided_by(&self, name: &str) -> &[usize] {
        self.decided_by.get(name).map_or(&[], Vec::as_slice)
    }

    /// The default transfer.
    pub fn transfer(&self) -> Option<&Transfer> {
        self.transfer.as_ref()
    }

    /// The `derive:` section: rules for `shardplan derive`.
    pub fn derive_rules(&self) -> Option<&DeriveRules> {
        self.derive.as_ref()
    }

    /// The `operators:` section: MindSpore operator shard strategies.
    pub fn operators(&self) -> Option<&OperatorGraph> {
        self.operators.as_ref()
    }

    /// Strategy `name`'s `stages` section, if it has one.
    pub fn stages(&self, name: &str) -> Option<&StageSpec> {
        self.stages.get(name)
    }

    /// For strategy `name`, the optimizer-shard ways (MindSpore's
    /// `opt_weight_shard_size`, as a group size; 1 = none) of every tensor
    /// a `mindspore` rule (or strategy file) decides.
    pub fn optimizer_shards(&self, name: &str) -> Option<&BTreeMap<String, u64>> {
        self.optimizer_shards.get(name)
    }

    /// The spec as YAML with `comment` at the top, which [`parse_spec`](super::parse_spec)
    /// reads back with the same layouts.
    ///
    /// # Errors
    ///
    /// [`write::WriteError`] for a tensor name or layout the spec format
    /// cannot express, or a strategy whose mesh the spec does not name.
    pub fn to_yaml(&self, comment: &str) -> Result<String, write::WriteError> {
        write::write_spec(&self.to_out(comment))
    }

    /// The spec as the writer's input: meshes, strategies by the name of
    /// their mesh, the transfer.
    pub(crate) fn to_out(&self, comment: &str) -> write::SpecOut<'_> {
        let mut strategies = Vec::with_capacity(self.strategies.len());
        for n in &self.order.strategies {
            // Every constructor records each strategy, with its mesh.
            let (s, mesh) = (&self.strategies[n], self.strategy_meshes[n].as_str());
            strategies.push(write::StrategyOut {
                name: n,
                mesh,
                strategy: s,
                optimizer_shards: self.optimizer_shards.get(n),
            });
        }
        write::SpecOut {
            comment: comment.to_string(),
            meshes: self
                .order
                .meshes
                .iter()
                .map(|n| (n.as_str(), self.meshes[n].clone()))
                .collect(),
            strategies,
            transfer: self
                .transfer
                .as_ref()
                .map(|t| (t.from.as_str(), t.to.as_str())),
        }
    }
}

/// A strategy's `stages` section, as written: the stage axis and the layer
/// pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageSpec {
    /// The stage axis.
    pub axis: String,
    /// The layer pattern, with `{}` where the layer index is.
    pub layer: String,
}
