//! Embedding shardplan in another runtime, without a YAML spec: describe the
//! meshes, tensors and layouts in code, plan, check the plan, and read off
//! what each destination rank has to copy.
//!
//! Run with `cargo run --example embed`.

use std::collections::BTreeMap;
use std::sync::Arc;

use shardplan::notation::{dtensor, jax::PartitionSpec};
use shardplan::{
    DType, DeviceMesh, DimSplit, LayoutConfig, PlanConfig, ReplicaChoice, Strategy, TensorInfo,
    TensorLayout, plan_transfer, verify_plan,
};

type Error = Box<dyn std::error::Error>;

fn main() -> Result<(), Error> {
    // Ranks are numbered row-major (last axis fastest): training rank 5 is
    // (dp 1, tp 1). Without explicit device ids, rank r of either mesh runs
    // on device r, so inference ranks 0 and 1 share devices with training
    // ranks 0 and 1; copies between those pairs never touch the network.
    let train = Arc::new(DeviceMesh::new([("dp", 2), ("tp", 4)])?);
    let infer = Arc::new(DeviceMesh::new([("tp", 2)])?);

    let tensor = |name: &str, shape: &[u64], dtype| TensorInfo {
        name: name.into(),
        shape: shape.to_vec(),
        dtype,
    };
    let qkv = tensor("attn.qkv.weight", &[48, 16], DType::BF16);
    let out = tensor("attn.out.weight", &[16, 16], DType::BF16);
    let norm = tensor("norm.weight", &[16], DType::F32);

    // Training, qkv: rows over tp, then each tp block cut again over dp
    // (optimizer sharding, ZeRO style). The axes of one dimension are listed
    // outermost first, so the 8 row blocks are ordered by (tp, dp).
    let zero = LayoutConfig {
        dims: vec![DimSplit::over(["tp", "dp"]), DimSplit::none()],
        ..Default::default()
    };
    let qkv_train = TensorLayout::new(train.clone(), &qkv.shape, &zero)?;
    // Layouts can also come from another framework's notation: a JAX
    // PartitionSpec (columns over tp, replicated over dp) ...
    let out_train = "P(None, 'tp')"
        .parse::<PartitionSpec>()?
        .to_layout(train.clone(), &out.shape)?;
    let norm_train = TensorLayout::replicated(train.clone(), &norm.shape)?;

    // ... or PyTorch DTensor placements, one per mesh dimension.
    let rows = LayoutConfig {
        dims: vec![DimSplit::over(["tp"]), DimSplit::none()],
        ..Default::default()
    };
    let qkv_infer = TensorLayout::new(infer.clone(), &qkv.shape, &rows)?;
    let shard1 = [dtensor::Placement::Shard(1)];
    let out_infer = dtensor::to_layout(infer.clone(), &out.shape, &shard1)?;
    let norm_infer = TensorLayout::replicated(infer.clone(), &norm.shape)?;

    let tensors = vec![qkv, out, norm];
    let src = Strategy::new(
        "train",
        train,
        tensors.clone(),
        vec![qkv_train, out_train, norm_train],
    )?;
    let dst = Strategy::new(
        "infer",
        infer,
        tensors,
        vec![qkv_infer, out_infer, norm_infer],
    )?;

    let config = PlanConfig {
        replica_choice: ReplicaChoice::Balance, // spread sends over replicas
        tensors: None,                          // every tensor
    };
    let plan = plan_transfer(&src, &dst, &config)?;
    // The verifier shares no code with the planner; a runtime that receives
    // plans from elsewhere should run it before moving any byte.
    let plan = verify_plan(plan, &src, &dst)?;
    let checked = plan.stats();

    // Group by destination rank: each rank executes only its own pieces,
    // in any order, since they never overlap.
    let mut by_dst = BTreeMap::<u64, Vec<_>>::new();
    for t in &plan.tensors {
        for p in &t.pieces {
            by_dst.entry(p.dst_rank).or_default().push((t, p));
        }
    }
    for (rank, pieces) in &by_dst {
        println!("destination rank {rank}:");
        for (t, p) in pieces {
            // src_box indexes the source rank's local buffer; the copy goes
            // to dst_local_offset in this rank's local buffer.
            println!(
                "  {:<16} {:<16} <- rank {} {:<15} to local {:<8} {:>4} B {}",
                t.name,
                p.dst_box.to_string(),
                p.src_rank,
                p.src_box.to_string(),
                format!("{:?}", p.dst_local_offset),
                t.piece_bytes(p),
                if p.local { "local" } else { "network" },
            );
        }
    }
    let s = plan.summary();
    println!(
        "{} pieces ({} messages): {} B over the network (lower bound {} B), {} B local; \
         largest send {} B (bound {} B), largest receive {} B",
        s.pieces,
        s.messages,
        s.total_bytes,
        s.lower_bound_bytes,
        s.local_bytes,
        s.max_send_bytes,
        s.max_send_lower_bound_bytes,
        s.max_recv_bytes,
    );
    assert_eq!(checked.network_bytes, s.total_bytes);
    Ok(())
}
