//! Pins to sub-meshes (pipeline stages): one layout per pinned coordinate,
//! and the pins as text.

use super::TensorLayout;

impl TensorLayout {
    /// The layout once per combination of its pinned coordinates, each
    /// pinned to one coordinate per axis: a tensor on stages 0 and 3 gives
    /// a layout at stage 0 and one at stage 3, cut alike (formats that
    /// record a tensor per stage write one entry for each).
    pub fn split_pins(&self) -> Vec<TensorLayout> {
        let mut out = vec![Vec::<(usize, u64)>::new()];
        for run in self.pin.chunk_by(|x, y| x.0 == y.0) {
            out = out
                .into_iter()
                .flat_map(|prefix| {
                    run.iter().map(move |&p| {
                        let mut v = prefix.clone();
                        v.push(p);
                        v
                    })
                })
                .collect();
        }
        out.into_iter()
            .map(|pin| TensorLayout {
                pin,
                ..self.clone()
            })
            .collect()
    }

    /// The layout once per coordinate of mesh axis `a`, pinned to it: a
    /// tensor on every pipeline stage (whose pin to all of them the
    /// constructor drops) as one layout per stage, for formats that record
    /// a tensor per stage. When `a` is not a replica axis of this layout
    /// (it splits, sums or pins) or is out of range, the layout alone.
    pub fn pinned_each(&self, a: usize) -> Vec<TensorLayout> {
        if !self.replica_axes().contains(&a) {
            return vec![self.clone()];
        }
        (0..self.mesh.axis_size(a))
            .map(|c| {
                let mut pin = self.pin.clone();
                pin.push((a, c));
                pin.sort_unstable();
                TensorLayout {
                    pin,
                    ..self.clone()
                }
            })
            .collect()
    }

    /// The pins as text, `pp=0|3, x=1`; empty when nothing is pinned.
    pub fn pin_text(&self) -> String {
        self.pin
            .chunk_by(|x, y| x.0 == y.0)
            .map(|run| {
                let coords: Vec<String> = run.iter().map(|&(_, c)| c.to_string()).collect();
                format!("{}={}", self.axis_name(run[0].0), coords.join("|"))
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}
