//! Random strategy pairs through the planner, the verifier and the
//! executor: every plan verifies at the volume bound, and executing it on
//! synthetic buffers reproduces every destination slice.
#![no_main]

use std::sync::Arc;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use shardplan::{
    DType, DeviceMesh, DimSplit, ExecConfig, LayoutConfig, PlanConfig, ReplicaChoice, ShardStore,
    SplitPolicy, Strategy, TensorInfo, TensorLayout, execute_plan_with, plan_transfer, verify_plan,
};

#[derive(Debug, Arbitrary)]
struct Side {
    axes: Vec<u8>,
    rotate: u8,
    roles: Vec<(u8, u8)>,
    policies: Vec<u8>,
}

#[derive(Debug, Arbitrary)]
struct Input {
    src: Side,
    dst: Side,
    shape: Vec<u8>,
    dtype: u8,
    min_files: bool,
    parallel: bool,
}

const DTYPES: [DType; 12] = [
    DType::F64, DType::F32, DType::F16, DType::BF16, DType::I64, DType::I32,
    DType::I16, DType::I8, DType::U64, DType::U32, DType::U16, DType::U8,
];

fn mesh(side: &Side) -> Arc<DeviceMesh> {
    let sizes: Vec<u64> = side.axes.iter().take(3).map(|a| u64::from(a % 3) + 1).collect();
    let m = DeviceMesh::new(sizes.iter().enumerate().map(|(i, &s)| (format!("a{i}"), s))).unwrap();
    let n = m.rank_count();
    let k = u64::from(side.rotate) % n;
    Arc::new(m.with_device_ids((0..n).map(|r| (r + k) % n).collect()).unwrap())
}

fn layout(mesh: &Arc<DeviceMesh>, side: &Side, shape: &[u64], partial_ok: bool) -> Option<TensorLayout> {
    let mut cfg = LayoutConfig::new(vec![DimSplit::none(); shape.len()]);
    for (i, axis) in mesh.axes().iter().enumerate() {
        let (role, arg) = side.roles.get(i).copied().unwrap_or((0, 0));
        match role % 4 {
            1 if !shape.is_empty() => cfg.dims[usize::from(arg) % shape.len()].axes.push(axis.name.clone()),
            2 => cfg.pin.push((axis.name.clone(), u64::from(arg) % axis.size)),
            3 if partial_ok => cfg.partial.push(axis.name.clone()),
            _ => {}
        }
    }
    for (d, dim) in cfg.dims.iter_mut().enumerate() {
        dim.policy = match side.policies.get(d).copied().unwrap_or(0) % 3 {
            0 => SplitPolicy::Even,
            1 => SplitPolicy::Chunk,
            _ => SplitPolicy::Balanced,
        };
    }
    // Uneven `even` splits are refused by the constructor; that is fine.
    TensorLayout::new(mesh.clone(), shape, &cfg).ok()
}

fuzz_target!(|input: Input| {
    let shape: Vec<u64> = input.shape.iter().take(3).map(|&s| u64::from(s % 9) + 1).collect();
    let t = TensorInfo { name: "t".into(), shape: shape.clone(), dtype: DTYPES[usize::from(input.dtype) % 12] };
    let (sm, dm) = (mesh(&input.src), mesh(&input.dst));
    let (Some(sl), Some(dl)) = (layout(&sm, &input.src, &shape, true), layout(&dm, &input.dst, &shape, false)) else {
        return;
    };
    let src = Strategy::new("src", sm, vec![t.clone()], vec![sl]).unwrap();
    let dst = Strategy::new("dst", dm, vec![t], vec![dl]).unwrap();
    let choice = if input.min_files { ReplicaChoice::MinFiles } else { ReplicaChoice::Balance };
    let plan = plan_transfer(&src, &dst, &PlanConfig::new(choice)).expect("plans");
    let plan = verify_plan(plan, &src, &dst).unwrap_or_else(|d| panic!("invalid plan: {d}"));
    assert_eq!(plan.stats().network_bytes, plan.lower_bound_bytes);
    let s = plan.summary();
    assert!(s.max_send_bytes >= s.max_send_lower_bound_bytes);
    let from = ShardStore::synthetic(&src);
    let mut to = ShardStore::zeroed(&dst);
    let exec = if input.parallel { ExecConfig::parallel() } else { ExecConfig::sequential() };
    execute_plan_with(&plan, &from, &mut to, &exec).expect("executes");
    to.check_synthetic(&dst, &src).unwrap_or_else(|e| panic!("{e}"));
});
