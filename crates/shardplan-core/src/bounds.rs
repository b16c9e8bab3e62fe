//! Lower bounds on what any plan must move, computed from the layouts alone
//! (no planning code), so that plans can be measured against them.

use std::collections::HashMap;

use crate::strategy::Strategy;

/// Network bytes every plan between `src` and `dst` must move for the named
/// tensors: for each destination rank, the bytes it must hold minus those
/// the source rank on its own device already holds.
///
/// Tensors missing from either strategy count nothing (the planner refuses
/// them).
pub fn volume_lower_bound(src: &Strategy, dst: &Strategy, tensors: &[&str]) -> u64 {
    let by_device = source_rank_by_device(src);
    let mut total = 0u64;
    for name in tensors {
        let (Some(sl), Some(dl), Some(info)) =
            (src.layout(name), dst.layout(name), dst.tensor(name))
        else {
            continue;
        };
        for d in 0..dst.mesh().rank_count() {
            let Some(need) = dl.region_of(d) else {
                continue;
            };
            let device = dst.mesh().device_of(d).unwrap_or(d);
            let held = by_device
                .get(&device)
                .and_then(|&s| sl.region_of(s))
                .and_then(|have| have.intersect(&need))
                .map_or(0, |r| r.volume());
            // A partial source sends one summand per term; the own device
            // holds at most one of them.
            let terms: u64 = sl
                .partial()
                .iter()
                .map(|&a| sl.mesh().axis_size(a))
                .product();
            total = total.saturating_add(
                (need.volume().saturating_mul(terms) - held)
                    .saturating_mul(info.dtype.size_bytes()),
            );
        }
    }
    total
}

/// Source rank running on each device.
pub(crate) fn source_rank_by_device(src: &Strategy) -> HashMap<u64, u64> {
    (0..src.mesh().rank_count())
        .map(|r| (src.mesh().device_of(r).unwrap_or(r), r))
        .collect()
}
