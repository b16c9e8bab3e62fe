//! The walk over the operators in execution order ([`derive_from_operators`]):
//! resolving inputs, giving weights their layouts, and measuring
//! redistributions.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::error::bad_strategy;
use super::raw::{op_layout, raw_layout};
use super::{
    DimSize, OpKind, OpLayout, Operator, OperatorDerivation, OperatorGraph, OpsError,
    Redistribution, StrategyFault, WeightConflict, WeightSource,
};
use crate::bounds::volume_lower_bound;
use crate::dtype::DType;
use crate::error::LayoutError;
use crate::layout::TensorLayout;
use crate::mesh::DeviceMesh;
use crate::notation::mindspore::MindSporeLayout;
use crate::strategy::{Strategy, TensorInfo};

/// Lays out every operator of `graph` over `graph.devices` devices, gives
/// each weight in `tensors` the layout of the first operator that reads it
/// (others are replicated), and measures the redistributions between
/// operators.
///
/// # Errors
///
/// [`OpsError`] for the first operator whose inputs, strategy or output do
/// not fit, naming it.
pub fn derive_from_operators(
    graph: &OperatorGraph,
    tensors: &[TensorInfo],
) -> Result<OperatorDerivation, OpsError> {
    let mut walk = Walk::new(graph, tensors)?;
    for (o, op) in graph.ops.iter().enumerate() {
        walk.operator(o, op)?;
    }
    walk.finish()
}

/// A value flowing between operators.
#[derive(Debug, Clone)]
struct Value {
    shape: Vec<u64>,
    dtype: DType,
    /// Producer and its output layout; `None` for weights and graph inputs.
    produced: Option<(usize, MindSporeLayout)>,
    /// Index into the weights, for weights.
    weight: Option<usize>,
}

/// A layout as MindSpore states it: device matrix and tensor map.
fn ms(dev: &[u64], map: &[i64]) -> MindSporeLayout {
    MindSporeLayout {
        dev_matrix: dev.to_vec(),
        tensor_map: map.iter().map(|&k| vec![k]).collect(),
        ..MindSporeLayout::default()
    }
}

/// A one-tensor strategy for measuring a redistribution.
fn single(
    name: &str,
    info: &TensorInfo,
    layout: TensorLayout,
    mesh: &Arc<DeviceMesh>,
) -> Option<Strategy> {
    let info = TensorInfo {
        name: name.to_string(),
        ..info.clone()
    };
    Strategy::new(name, mesh.clone(), vec![info], vec![layout]).ok()
}

fn moved_bytes(
    name: &str,
    shape: &[u64],
    dtype: DType,
    from: &TensorLayout,
    to: &TensorLayout,
    mesh: &Arc<DeviceMesh>,
) -> u64 {
    let info = TensorInfo {
        name: name.to_string(),
        shape: shape.to_vec(),
        dtype,
    };
    match (
        single(name, &info, from.clone(), mesh),
        single(name, &info, to.clone(), mesh),
    ) {
        (Some(a), Some(b)) => volume_lower_bound(&a, &b, &[name]),
        _ => 0,
    }
}

/// The walk over the operators in execution order: every value named so
/// far, and what the operators decided or need.
struct Walk<'g> {
    graph: &'g OperatorGraph,
    tensors: &'g [TensorInfo],
    /// Stages of the graph, at least 1.
    stages: u64,
    /// One stage's devices: layouts are compared within a stage.
    mesh: Arc<DeviceMesh>,
    /// Weights, graph inputs and the outputs of the operators walked.
    values: BTreeMap<String, Value>,
    /// Per weight: who decided it, its layout on one stage.
    weights: Vec<Option<(WeightSource, TensorLayout)>>,
    ops: Vec<OpLayout>,
    redistributions: Vec<Redistribution>,
    conflicts: Vec<WeightConflict>,
}

/// One input of an operator and the layout the operator needs it in.
struct Read<'a> {
    /// Index of the operator.
    op: usize,
    /// Its stage.
    stage: u64,
    /// Position of the input.
    input: usize,
    name: &'a str,
    value: &'a Value,
    /// The layout needed, as MindSpore states it.
    want_ms: MindSporeLayout,
    /// The same layout on the stage's mesh.
    want: TensorLayout,
}

impl<'g> Walk<'g> {
    /// Checks the graph has devices and a batch, builds one stage's mesh,
    /// and names the weights and graph inputs.
    fn new(graph: &'g OperatorGraph, tensors: &'g [TensorInfo]) -> Result<Self, OpsError> {
        let (devices, batch) = (graph.devices, graph.batch);
        if devices == 0 || batch == 0 {
            return Err(OpsError::Empty { devices, batch });
        }
        let mesh = Arc::new(DeviceMesh::new([("rank", devices)]).map_err(OpsError::Mesh)?);
        Ok(Walk {
            graph,
            tensors,
            stages: graph.stages.max(1),
            mesh,
            values: seed_values(graph, tensors)?,
            weights: vec![None; tensors.len()],
            ops: Vec::with_capacity(graph.ops.len()),
            redistributions: Vec::new(),
            conflicts: Vec::new(),
        })
    }

    /// Lays out operator `o`, records what it reads and names its output;
    /// checks run in the order errors are reported.
    fn operator(&mut self, o: usize, op: &Operator) -> Result<(), OpsError> {
        check_operator(o, op, self.stages)?;
        let ins = self.resolve_inputs(o, op)?;
        let shapes: Vec<&[u64]> = ins.iter().map(|v| v.shape.as_slice()).collect();
        let raw = raw_layout(o, op, &shapes, self.graph.devices)?;
        let dtype = output_dtype(op.kind, &ins);
        let layout = op_layout(o, raw, self.graph, dtype)?;
        self.record_inputs(o, op, &ins, &layout)?;
        self.record_output(o, op, layout, dtype)
    }

    /// The values `op` reads, in input order.
    fn resolve_inputs(&self, o: usize, op: &Operator) -> Result<Vec<Value>, OpsError> {
        (0..op.inputs.len())
            .map(|k| self.resolve_input(o, op, k))
            .collect()
    }

    /// Input `k` of `op`: a known value its strategy fits, produced on the
    /// operator's stage or an earlier one.
    fn resolve_input(&self, o: usize, op: &Operator, k: usize) -> Result<Value, OpsError> {
        let name = &op.inputs[k];
        let v = self
            .values
            .get(name)
            .ok_or_else(|| OpsError::UnknownInput {
                op: o,
                input: k,
                name: name.clone(),
            })?;
        let s = &op.strategy[k];
        if s.len() != v.shape.len() {
            return Err(bad_strategy(
                o,
                op.kind,
                Some(k),
                StrategyFault::StrategyRank {
                    input: name.clone(),
                    shape: v.shape.clone(),
                    entries: s.len(),
                },
            ));
        }
        if s.contains(&0) {
            return Err(bad_strategy(o, op.kind, Some(k), StrategyFault::ZeroEntry));
        }
        if let Some((producer, _)) = &v.produced
            && self.graph.ops[*producer].stage > op.stage
        {
            return Err(OpsError::StageOrder {
                op: o,
                input: k,
                name: name.clone(),
                stage: op.stage,
                producer: *producer,
                producer_stage: self.graph.ops[*producer].stage,
            });
        }
        Ok(v.clone())
    }

    /// Checks every input fits the layout operator `o` needs it in, then
    /// notes weight sources, conflicts and redistributions, input by input.
    fn record_inputs(
        &mut self,
        o: usize,
        op: &Operator,
        ins: &[Value],
        layout: &OpLayout,
    ) -> Result<(), OpsError> {
        for (k, (v, map)) in ins.iter().zip(&layout.inputs).enumerate() {
            let name = &op.inputs[k];
            let want_ms = ms(&layout.dev_matrix, map);
            let want = tensor_layout(o, &want_ms, &v.shape, name, Some(k))?;
            let read = Read {
                op: o,
                stage: op.stage,
                input: k,
                name,
                value: v,
                want_ms,
                want,
            };
            if let Some(w) = v.weight {
                self.read_weight(w, read);
            } else if let Some((producer, from_ms)) = &v.produced {
                self.read_activation(*producer, from_ms, read)?;
            }
        }
        Ok(())
    }

    /// The first operator to read weight `w` decides its layout; a later
    /// one wanting another cut is a conflict, one on another stage wanting
    /// the same cut puts the weight on that stage too.
    fn read_weight(&mut self, w: usize, read: Read<'_>) {
        let Read { op, stage, .. } = read;
        match &self.weights[w] {
            None => {
                let source = WeightSource {
                    op,
                    input: read.input,
                    layout: read.want_ms,
                    stages: vec![stage],
                };
                self.weights[w] = Some((source, read.want.clone()));
            }
            Some((first, have)) if !have.same_placement(&read.want) => {
                let v = read.value;
                self.conflicts.push(WeightConflict {
                    tensor: read.name.to_string(),
                    first: first.op,
                    other: op,
                    bytes: moved_bytes(read.name, &v.shape, v.dtype, have, &read.want, &self.mesh),
                    wanted: read.want_ms,
                });
            }
            Some(_) => {}
        }
        if let Some((src, have)) = &mut self.weights[w]
            && have.same_placement(&read.want)
            && !src.stages.contains(&stage)
        {
            src.stages.push(stage);
            src.stages.sort_unstable();
        }
    }

    /// An activation `producer` left in `from_ms`: when the reader needs
    /// another placement, the runtime redistributes it.
    fn read_activation(
        &mut self,
        producer: usize,
        from_ms: &MindSporeLayout,
        read: Read<'_>,
    ) -> Result<(), OpsError> {
        let v = read.value;
        let from = tensor_layout(read.op, from_ms, &v.shape, read.name, None)?;
        if !from.same_placement(&read.want) {
            self.redistributions.push(Redistribution {
                activation: read.name.to_string(),
                producer,
                consumer: read.op,
                from: from_ms.clone(),
                bytes: moved_bytes(read.name, &v.shape, v.dtype, &from, &read.want, &self.mesh),
                to: read.want_ms,
            });
        }
        Ok(())
    }

    /// Checks operator `o`'s output fits its layout and has a new name,
    /// then names it and keeps the operator's layout.
    fn record_output(
        &mut self,
        o: usize,
        op: &Operator,
        layout: OpLayout,
        dtype: DType,
    ) -> Result<(), OpsError> {
        let out_ms = ms(&layout.output_dev_matrix, &layout.output);
        tensor_layout(o, &out_ms, &layout.output_shape, &op.output, None)?;
        if self.values.contains_key(&op.output) {
            return Err(OpsError::DuplicateOutput {
                op: o,
                name: op.output.clone(),
            });
        }
        let value = Value {
            shape: layout.output_shape.clone(),
            dtype,
            produced: Some((o, out_ms)),
            weight: None,
        };
        self.values.insert(op.output.clone(), value);
        self.ops.push(layout);
        Ok(())
    }

    /// The strategy of the weights' layouts and the derivation around it.
    fn finish(self) -> Result<OperatorDerivation, OpsError> {
        let Walk {
            graph,
            tensors,
            stages,
            mesh,
            weights,
            ops,
            redistributions,
            conflicts,
            ..
        } = self;
        // With stages, each weight lives on the stages that read it; the
        // activations' comparisons above stay within one stage's devices.
        let mesh = if stages > 1 {
            let axes = [("stage", stages), ("rank", graph.devices)];
            Arc::new(DeviceMesh::new(axes).map_err(OpsError::Mesh)?)
        } else {
            mesh
        };
        let layouts = tensors
            .iter()
            .zip(&weights)
            .map(|(t, w)| weight_layout(t, w.as_ref(), stages, &mesh))
            .collect::<Result<Vec<_>, _>>()?;
        let strategy = Strategy::new("derived", mesh, tensors.to_vec(), layouts)?;
        Ok(OperatorDerivation {
            strategy,
            ops,
            weights: weights.into_iter().map(|w| w.map(|(s, _)| s)).collect(),
            redistributions,
            conflicts,
        })
    }
}

/// The values before any operator: the weights, then the graph inputs
/// with the graph's batch, which must not reuse a name.
fn seed_values(
    graph: &OperatorGraph,
    tensors: &[TensorInfo],
) -> Result<BTreeMap<String, Value>, OpsError> {
    let mut values = BTreeMap::new();
    for (i, t) in tensors.iter().enumerate() {
        let value = Value {
            shape: t.shape.clone(),
            dtype: t.dtype,
            produced: None,
            weight: Some(i),
        };
        values.insert(t.name.clone(), value);
    }
    for a in &graph.inputs {
        if values.contains_key(&a.name) {
            return Err(OpsError::DuplicateInput {
                name: a.name.clone(),
            });
        }
        let shape = a
            .shape
            .iter()
            .map(|d| match d {
                DimSize::Fixed(n) => *n,
                DimSize::Batch => graph.batch,
            })
            .collect();
        let value = Value {
            shape,
            dtype: a.dtype,
            produced: None,
            weight: None,
        };
        values.insert(a.name.clone(), value);
    }
    Ok(values)
}

/// Checks operator `o` is on a stage of the graph and has as many inputs
/// as its kind takes, with one strategy each.
fn check_operator(o: usize, op: &Operator, stages: u64) -> Result<(), OpsError> {
    if op.stage >= stages {
        return Err(OpsError::Stage {
            op: o,
            stage: op.stage,
            stages,
        });
    }
    let n = op.inputs.len();
    if !op.kind.arity().contains(&n) {
        let fault = StrategyFault::Arity {
            takes: op.kind.arity().to_vec(),
            got: n,
        };
        return Err(bad_strategy(o, op.kind, None, fault));
    }
    if op.strategy.len() != n {
        let fault = StrategyFault::StrategyCount {
            strategies: op.strategy.len(),
            inputs: n,
        };
        return Err(bad_strategy(o, op.kind, None, fault));
    }
    Ok(())
}

/// The output's element type: a `Gather` returns its table's, the others
/// their first floating-point input's (else the first input's).
fn output_dtype(kind: OpKind, ins: &[Value]) -> DType {
    match kind {
        OpKind::Gather => ins[0].dtype,
        _ => ins
            .iter()
            .map(|v| v.dtype)
            .find(|d| matches!(d, DType::F64 | DType::F32 | DType::F16 | DType::BF16))
            .unwrap_or(ins[0].dtype),
    }
}

/// `ml` as a layout of `shape`, refusals named after operator `o` and the
/// tensor: an uneven split is the strategy's fault, anything else the
/// core's.
fn tensor_layout(
    o: usize,
    ml: &MindSporeLayout,
    shape: &[u64],
    name: &str,
    input: Option<usize>,
) -> Result<TensorLayout, OpsError> {
    ml.to_layout(shape).map_err(|e| match e {
        LayoutError::UnevenSplit { dim, size, blocks } => OpsError::Indivisible {
            op: o,
            input,
            tensor: name.to_string(),
            dim,
            size,
            ways: blocks,
        },
        source => OpsError::Layout {
            op: o,
            tensor: name.to_string(),
            source,
        },
    })
}

/// Weight `t`'s layout in the strategy: the one its first reader decided,
/// on every stage that reads it, or replicated when no operator reads it.
fn weight_layout(
    t: &TensorInfo,
    w: Option<&(WeightSource, TensorLayout)>,
    stages: u64,
    mesh: &Arc<DeviceMesh>,
) -> Result<TensorLayout, OpsError> {
    let fail = |source| OpsError::Layout {
        op: w.map_or(0, |(s, _)| s.op),
        tensor: t.name.clone(),
        source,
    };
    match w {
        Some((_, l)) if stages == 1 => Ok(l.clone()),
        Some((src, _)) => {
            let staged = MindSporeLayout {
                stage: src.stages[0],
                stage_count: stages,
                ..src.layout.clone()
            };
            staged
                .to_layout_on_stages(&t.shape, &src.stages[1..])
                .map_err(fail)
        }
        None => TensorLayout::replicated(mesh.clone(), &t.shape).map_err(fail),
    }
}
