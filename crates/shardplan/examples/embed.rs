//! A runtime embedding shardplan, with no YAML and no file: the meshes,
//! tensors and layouts are built in code (one layout each in shardplan's
//! own terms, a JAX PartitionSpec and DTensor placements), the plan is made
//! and checked, and each destination rank reads off the copies it makes.
//!
//! `cargo run --example embed`. `cargo test` builds it, so it cannot drift
//! from the API, and `scripts/test.sh` runs it.

use std::collections::BTreeMap;
use std::sync::Arc;

use shardplan::notation::{dtensor, jax::PartitionSpec};
use shardplan::{
    DType, DeviceMesh, DimSplit, LayoutConfig, PlanConfig, ReplicaChoice, Strategy, TensorInfo,
    TensorLayout, plan_transfer, verify_plan,
};

type Error = Box<dyn std::error::Error>;

fn tensor(name: &str, shape: &[u64], dtype: DType) -> TensorInfo {
    TensorInfo {
        name: name.into(),
        shape: shape.to_vec(),
        dtype,
    }
}

fn main() -> Result<(), Error> {
    // Rank r of a mesh runs on device r unless device ids say otherwise, so
    // inference ranks 0 and 1 share devices with training ranks 0 and 1 and
    // copies between them stay local. Ranks count row-major: training rank
    // 6 is (dp 1, tp 2).
    let train = Arc::new(DeviceMesh::new([("dp", 2), ("tp", 4)])?);
    let infer = Arc::new(DeviceMesh::new([("tp", 2)])?);
    let tensors = vec![
        tensor("layers.0.mlp.up.weight", &[64, 16], DType::BF16),
        tensor("layers.0.mlp.down.weight", &[16, 64], DType::BF16),
        tensor("layers.0.norm.weight", &[16], DType::F32),
    ];
    let [up, down, norm] = [0, 1, 2].map(|i| tensors[i].shape.as_slice());

    // Training. `up`: rows over tp, each tp block cut again over dp (a
    // ZeRO-style optimizer shard); the axes of a dimension are listed
    // outermost first.
    let rows_tp_dp = LayoutConfig::new(vec![DimSplit::over(["tp", "dp"]), DimSplit::none()]);
    let train_layouts = vec![
        TensorLayout::new(train.clone(), up, &rows_tp_dp)?,
        // `down`: columns over tp, as a JAX PartitionSpec.
        "P(None, 'tp')"
            .parse::<PartitionSpec>()?
            .to_layout(train.clone(), down)?,
        TensorLayout::replicated(train.clone(), norm)?,
    ];

    // Inference: the same cuts over a tp of 2, `down` as DTensor placements
    // (one per mesh dimension).
    let rows_tp = LayoutConfig::new(vec![DimSplit::over(["tp"]), DimSplit::none()]);
    let infer_layouts = vec![
        TensorLayout::new(infer.clone(), up, &rows_tp)?,
        dtensor::to_layout(infer.clone(), down, &[dtensor::Placement::Shard(1)])?,
        TensorLayout::replicated(infer.clone(), norm)?,
    ];

    let src = Strategy::new("train", train, tensors.clone(), train_layouts)?;
    let dst = Strategy::new("infer", infer, tensors, infer_layouts)?;

    // Balance spreads the sends over the replicas (here the two dp groups).
    let plan = plan_transfer(&src, &dst, &PlanConfig::new(ReplicaChoice::Balance))?;
    // The verifier shares no code with the planner: a runtime handed a plan
    // from elsewhere checks it before moving a byte, and only a
    // `VerifiedPlan` reaches the executor and the writers.
    let plan = verify_plan(plan, &src, &dst)?;

    // Each destination rank carries out its own pieces, in any order: they
    // never overlap. `src_box` indexes the source rank's local buffer.
    let mut by_rank = BTreeMap::<u64, Vec<_>>::new();
    for t in &plan.tensors {
        for p in &t.pieces {
            by_rank.entry(p.dst_rank).or_default().push((t, p));
        }
    }
    for (rank, pieces) in &by_rank {
        println!("destination rank {rank}:");
        for (t, p) in pieces {
            let route = if p.local { "local" } else { "network" };
            println!(
                "  {:<26} {:<14} <- rank {} {:<14} at {:?} ({} B, {route})",
                t.name,
                p.dst_box.to_string(),
                p.src_rank,
                p.src_box.to_string(),
                p.dst_local_offset,
                t.piece_bytes(p),
            );
        }
    }
    let s = plan.summary();
    println!(
        "{} pieces: {} B over the network (the lower bound is {} B), {} B local; \
         largest send {} B",
        s.pieces, s.total_bytes, s.lower_bound_bytes, s.local_bytes, s.max_send_bytes,
    );
    if plan.stats().network_bytes != s.lower_bound_bytes {
        return Err("the verified plan moves more than the lower bound".into());
    }
    Ok(())
}
