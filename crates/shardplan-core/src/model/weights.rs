//! Deterministic weights, full and as the boxes a layout gives each rank.

use std::collections::BTreeMap;

use super::*;
use crate::dtype::DType;
use crate::execute::ShardStore;
use crate::geometry::Region;
use crate::strategy::Strategy;

/// splitmix64: a small, well-mixed generator.
pub(super) struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[-a, a)`.
    fn uniform(&mut self, a: f32) -> f32 {
        let u = (self.next() >> 40) as f32 / (1u64 << 24) as f32;
        (2.0 * u - 1.0) * a
    }
}

/// FNV-1a of a name: each tensor draws from its own stream.
pub(super) fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Full f32 tensors of a model, generated deterministically from a seed.
#[derive(Debug, Clone, PartialEq)]
pub struct Weights {
    pub(super) config: ModelConfig,
    tensors: BTreeMap<String, Vec<f32>>,
}

impl Weights {
    /// Weights for `config` from `seed`. Each tensor draws from a stream of
    /// its own (seeded by `seed` and its name): the embedding uniform in
    /// [-1, 1], norm weights in [0.9, 1.1], a matmul weight `[out, in]`
    /// uniform in ±1/√in (so activations stay of order 1).
    ///
    /// # Errors
    ///
    /// [`ModelError::Config`] when `config` does not validate.
    pub fn generate(config: &ModelConfig, seed: u64) -> Result<Self, ModelError> {
        config.validate()?;
        let mut tensors = BTreeMap::new();
        for t in config.tensors() {
            let mut rng = Rng(seed ^ name_hash(&t.name));
            let n: u64 = t.shape.iter().product();
            let data: Vec<f32> = if t.shape.len() == 1 {
                (0..n).map(|_| 1.0 + rng.uniform(0.1)).collect()
            } else if t.name == EMBED {
                (0..n).map(|_| rng.uniform(1.0)).collect()
            } else {
                let a = 1.0 / (t.shape[1] as f32).sqrt();
                (0..n).map(|_| rng.uniform(a)).collect()
            };
            tensors.insert(t.name, data);
        }
        Ok(Weights {
            config: *config,
            tensors,
        })
    }

    /// The sizes.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The full tensor `name`, row-major.
    pub fn get(&self, name: &str) -> Option<&[f32]> {
        self.tensors.get(name).map(Vec::as_slice)
    }

    pub(super) fn need(&self, name: &str) -> &[f32] {
        self.get(name)
            .expect("generated weights hold every tensor of their config")
    }

    /// A store for `strategy` whose every buffer holds the slice of these
    /// weights its layout assigns (`ShardStore::zeroed`, then each rank's
    /// `region_of` box copied in). For a layout with partial-sum axes, the
    /// rank at coordinate 0 of those axes holds the values and the others
    /// zeros, so the terms sum to the weights exactly.
    ///
    /// # Errors
    ///
    /// [`ModelError::MissingTensor`] for a tensor of the strategy that is
    /// not a tensor of the model, [`ModelError::Shape`] or
    /// [`ModelError::DType`] when it disagrees with the model.
    pub fn to_store(&self, strategy: &Strategy) -> Result<ShardStore, ModelError> {
        let mut store = ShardStore::zeroed(strategy);
        for (t, (info, layout)) in strategy
            .tensors()
            .iter()
            .zip(strategy.layouts())
            .enumerate()
        {
            let full = self
                .get(&info.name)
                .ok_or_else(|| ModelError::MissingTensor {
                    tensor: info.name.clone(),
                    place: "the model's weights".into(),
                })?;
            let shape = self
                .config
                .tensors()
                .into_iter()
                .find(|x| x.name == info.name)
                .map(|x| x.shape)
                .expect("weights and config list the same tensors");
            if info.shape != shape {
                return Err(ModelError::Shape {
                    tensor: info.name.clone(),
                    expected: shape,
                    found: info.shape.clone(),
                });
            }
            if info.dtype != DType::F32 {
                return Err(ModelError::DType {
                    tensor: info.name.clone(),
                    dtype: info.dtype,
                });
            }
            for rank in 0..strategy.mesh().rank_count() {
                let Some(region) = layout.region_of(rank) else {
                    continue;
                };
                let coords = layout.mesh().coords(rank).expect("rank of the mesh");
                if layout.partial().iter().any(|&a| coords[a] != 0) {
                    continue; // a zero term
                }
                let bytes: Vec<u8> = extract(full, &shape, &region)
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect();
                let buf = store
                    .buffer_mut(t, rank)
                    .expect("zeroed store has a buffer wherever a region is");
                buf.copy_from_slice(&bytes);
            }
        }
        Ok(store)
    }
}

/// The elements of `region` of the row-major tensor `full` of `shape`.
pub(super) fn extract(full: &[f32], shape: &[u64], region: &Region) -> Vec<f32> {
    let mut out = Vec::with_capacity(region.volume() as usize);
    if region.is_empty() {
        return out;
    }
    let n = shape.len();
    let mut idx = region.offset().to_vec();
    loop {
        let flat = shape.iter().zip(&idx).fold(0u64, |acc, (s, i)| acc * s + i);
        out.push(full[flat as usize]);
        let mut k = n;
        loop {
            if k == 0 {
                return out;
            }
            k -= 1;
            idx[k] += 1;
            if idx[k] < region.end(k) {
                break;
            }
            idx[k] = region.offset()[k];
        }
    }
}
