//! The forwards: on one device from full tensors, and sharded from the
//! shards each rank holds.

use std::ops::Range;

use super::*;
use crate::execute::ShardStore;
use crate::geometry::Region;
use crate::strategy::Strategy;

/// A batch flattened: token ids, each sequence's rows, positions.
pub(super) struct Batch {
    ids: Vec<usize>,
    seqs: Vec<Range<usize>>,
    pos: Vec<usize>,
}

impl Batch {
    fn new(tokens: &[Vec<u32>], vocab: usize) -> Result<Self, ModelError> {
        let mut b = Batch {
            ids: Vec::new(),
            seqs: Vec::new(),
            pos: Vec::new(),
        };
        for (s, seq) in tokens.iter().enumerate() {
            let start = b.ids.len();
            for (p, &tok) in seq.iter().enumerate() {
                if !((tok as usize) < vocab) {
                    return Err(ModelError::Token {
                        sequence: s,
                        position: p,
                        token: tok,
                        vocab,
                    });
                }
                b.ids.push(tok as usize);
                b.pos.push(p);
            }
            b.seqs.push(start..b.ids.len());
        }
        Ok(b)
    }

    fn rows(&self) -> usize {
        self.ids.len()
    }
}

/// The single-device reference forward. `tokens` is a batch of sequences
/// (of any lengths; each attends causally within itself). Returns the
/// logits `[total tokens, vocab]`, row-major, sequences one after another.
///
/// # Errors
///
/// [`ModelError::Token`] for an id outside the vocabulary.
pub fn forward_single(weights: &Weights, tokens: &[Vec<u32>]) -> Result<Vec<f32>, ModelError> {
    let c = &weights.config;
    let b = Batch::new(tokens, c.vocab)?;
    let (n, hd) = (b.rows(), c.hidden);
    let embed = weights.need(EMBED);
    let mut x: Vec<f32> = b
        .ids
        .iter()
        .flat_map(|&t| embed[t * hd..(t + 1) * hd].iter().copied())
        .collect();
    let (qn, kvn) = (c.heads * c.head_dim, c.kv_heads * c.head_dim);
    for i in 0..c.layers {
        let w = |part: &str| weights.need(&layer_tensor(i, part));
        let h = rmsnorm(&x, hd, w("input_layernorm.weight"));
        let mut q = linear(&h, n, hd, w("self_attn.q_proj.weight"), qn);
        let mut k = linear(&h, n, hd, w("self_attn.k_proj.weight"), kvn);
        let v = linear(&h, n, hd, w("self_attn.v_proj.weight"), kvn);
        rope(&mut q, c.heads, c.head_dim, &b.pos);
        rope(&mut k, c.kv_heads, c.head_dim, &b.pos);
        let a = attention(&q, &k, &v, n, c.heads, c.kv_heads, c.head_dim, &b.seqs);
        let o = linear(&a, n, qn, w("self_attn.o_proj.weight"), hd);
        add_into(&mut x, &o);
        let h = rmsnorm(&x, hd, w("post_attention_layernorm.weight"));
        let g = linear(&h, n, hd, w("mlp.gate_proj.weight"), c.intermediate);
        let u = linear(&h, n, hd, w("mlp.up_proj.weight"), c.intermediate);
        let d = linear(
            &swiglu(&g, &u),
            n,
            c.intermediate,
            w("mlp.down_proj.weight"),
            hd,
        );
        add_into(&mut x, &d);
    }
    let h = rmsnorm(&x, hd, weights.need(FINAL_NORM));
    Ok(linear(&h, n, hd, weights.need(c.head_tensor()), c.vocab))
}

/// Reads rank-local shards out of a store, checked against the strategy.
pub(super) struct Shards<'a> {
    s: &'a Strategy,
    store: &'a ShardStore,
}

impl Shards<'_> {
    /// The box rank `rank` holds of `name` and its values.
    fn local(&self, name: &str, rank: u64) -> Result<(Region, Vec<f32>), ModelError> {
        let err = |fault: StoreFault| ModelError::Store {
            tensor: name.to_string(),
            rank,
            fault,
        };
        let t = self
            .store
            .tensor_index(name)
            .ok_or_else(|| err(StoreFault::NotInStore))?;
        let want = self
            .s
            .layout(name)
            .and_then(|l| l.region_of(rank))
            .ok_or_else(|| err(StoreFault::NothingAssigned))?;
        match self.store.region(t, rank) {
            Some(r) if *r == want => {}
            other => {
                return Err(err(StoreFault::WrongBox {
                    held: other.cloned(),
                    assigned: want,
                }));
            }
        }
        let buf = self
            .store
            .buffer(t, rank)
            .ok_or_else(|| err(StoreFault::NoBuffer))?;
        if buf.len() as u64 != want.volume() * 4 {
            return Err(err(StoreFault::BufferSize {
                bytes: buf.len(),
                elements: want.volume(),
            }));
        }
        let values = buf
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok((want, values))
    }

    fn layer(&self, i: usize, part: &str, rank: u64) -> Result<(Region, Vec<f32>), ModelError> {
        self.local(&layer_tensor(i, part), rank)
    }
}

/// Runs the model from the shards `store` holds for `strategy`, simulating
/// the ranks one after another (see the module documentation for the
/// supported layouts). Returns the logits as [`forward_single`] does.
///
/// # Errors
///
/// Whatever [`check_layout`] finds, before any arithmetic;
/// [`ModelError::Store`] when the store does not hold what the strategy
/// assigns; [`ModelError::Token`] for an id outside the vocabulary.
pub fn forward_sharded(
    config: &ModelConfig,
    strategy: &Strategy,
    store: &ShardStore,
    tokens: &[Vec<u32>],
) -> Result<Vec<f32>, ModelError> {
    let schedule = schedule(config, strategy)?;
    let b = Batch::new(tokens, config.vocab)?;
    let sh = Shards { s: strategy, store };
    let (embed_ranks, embed_split) = &schedule.embed;
    let mut x = sh.embed(config, &b, embed_ranks, *embed_split)?;
    for (i, (attn_ranks, mlp_ranks)) in schedule.layers.iter().enumerate() {
        let a = sh.attention(config, &b, i, attn_ranks, &x)?;
        add_into(&mut x, &a);
        let m = sh.mlp(config, &b, i, mlp_ranks, &x)?;
        add_into(&mut x, &m);
    }
    let (head_ranks, head_split) = &schedule.head;
    sh.head(config, &b, head_ranks, *head_split, &x)
}

/// The blocks of the forward, each run rank by rank on the rank's shards
/// and combined as the layout asks.
impl Shards<'_> {
    /// Embedding: rows (vocabulary-parallel: masked lookup, all-reduce),
    /// columns (hidden slices, all-gather) or whole.
    fn embed(
        &self,
        config: &ModelConfig,
        b: &Batch,
        ranks: &[u64],
        split: Option<usize>,
    ) -> Result<Vec<f32>, ModelError> {
        let (n, hd) = (b.rows(), config.hidden);
        let mut acc = None;
        let mut gathered = vec![0.0f32; n * hd];
        for &r in ranks {
            let (reg, w) = self.local(EMBED, r)?;
            let (rows, cols) = (span(&reg, 0), span(&reg, 1));
            let width = (cols.end - cols.start) as usize;
            let mut part = vec![0.0f32; n * width];
            if width > 0 {
                for (row, &t) in part.chunks_exact_mut(width).zip(&b.ids) {
                    if rows.contains(&(t as u64)) {
                        let lt = t - rows.start as usize;
                        row.copy_from_slice(&w[lt * width..(lt + 1) * width]);
                    }
                }
            }
            if split == Some(1) {
                put_columns(&mut gathered, hd, cols.start as usize, &part, width);
            } else {
                all_reduce(&mut acc, part);
            }
        }
        Ok(match split {
            Some(1) => gathered,
            _ => acc.expect("a block has at least one rank"),
        })
    }

    /// Layer `i`'s attention: each rank on its own heads; the o outputs
    /// all-reduced.
    fn attention(
        &self,
        config: &ModelConfig,
        b: &Batch,
        i: usize,
        ranks: &[u64],
        x: &[f32],
    ) -> Result<Vec<f32>, ModelError> {
        let (n, hd, d) = (b.rows(), config.hidden, config.head_dim);
        let mut acc = None;
        for &r in ranks {
            let (_, norm) = self.layer(i, "input_layernorm.weight", r)?;
            let h = rmsnorm(x, hd, &norm);
            let (qr, wq) = self.layer(i, "self_attn.q_proj.weight", r)?;
            let (kr, wk) = self.layer(i, "self_attn.k_proj.weight", r)?;
            let (_, wv) = self.layer(i, "self_attn.v_proj.weight", r)?;
            let (or, wo) = self.layer(i, "self_attn.o_proj.weight", r)?;
            let (qn, kvn) = (qr.extent()[0] as usize, kr.extent()[0] as usize);
            let mut q = linear(&h, n, hd, &wq, qn);
            let mut k = linear(&h, n, hd, &wk, kvn);
            let v = linear(&h, n, hd, &wv, kvn);
            rope(&mut q, qn / d, d, &b.pos);
            rope(&mut k, kvn / d, d, &b.pos);
            let a = attention(&q, &k, &v, n, qn / d, kvn / d, d, &b.seqs);
            let o_in = or.extent()[1] as usize;
            all_reduce(&mut acc, linear(&a, n, o_in, &wo, hd));
        }
        Ok(acc.expect("a block has at least one rank"))
    }

    /// Layer `i`'s MLP: each rank on its slice of the inner dimension;
    /// all-reduced.
    fn mlp(
        &self,
        config: &ModelConfig,
        b: &Batch,
        i: usize,
        ranks: &[u64],
        x: &[f32],
    ) -> Result<Vec<f32>, ModelError> {
        let (n, hd) = (b.rows(), config.hidden);
        let mut acc = None;
        for &r in ranks {
            let (_, norm) = self.layer(i, "post_attention_layernorm.weight", r)?;
            let h = rmsnorm(x, hd, &norm);
            let (gr, wg) = self.layer(i, "mlp.gate_proj.weight", r)?;
            let (_, wu) = self.layer(i, "mlp.up_proj.weight", r)?;
            let (_, wd) = self.layer(i, "mlp.down_proj.weight", r)?;
            let m = gr.extent()[0] as usize;
            let g = linear(&h, n, hd, &wg, m);
            let u = linear(&h, n, hd, &wu, m);
            all_reduce(&mut acc, linear(&swiglu(&g, &u), n, m, &wd, hd));
        }
        Ok(acc.expect("a block has at least one rank"))
    }

    /// Final norm and output projection: rows (vocabulary slices,
    /// all-gather), columns (partial logits, all-reduce) or whole.
    fn head(
        &self,
        config: &ModelConfig,
        b: &Batch,
        ranks: &[u64],
        split: Option<usize>,
        x: &[f32],
    ) -> Result<Vec<f32>, ModelError> {
        let (n, hd) = (b.rows(), config.hidden);
        let mut acc = None;
        let mut gathered = vec![0.0f32; n * config.vocab];
        for &r in ranks {
            let (_, norm) = self.local(FINAL_NORM, r)?;
            let h = rmsnorm(x, hd, &norm);
            let (reg, w) = self.local(config.head_tensor(), r)?;
            let (rows, cols) = (span(&reg, 0), span(&reg, 1));
            let (vr, width) = (
                (rows.end - rows.start) as usize,
                (cols.end - cols.start) as usize,
            );
            match split {
                Some(0) => {
                    let part = linear(&h, n, hd, &w, vr);
                    put_columns(&mut gathered, config.vocab, rows.start as usize, &part, vr);
                }
                Some(_) => {
                    let hs = columns(&h, hd, cols.start as usize, cols.end as usize);
                    all_reduce(&mut acc, linear(&hs, n, width, &w, vr));
                }
                None => all_reduce(&mut acc, linear(&h, n, hd, &w, vr)),
            }
        }
        Ok(match split {
            Some(0) => gathered,
            _ => acc.expect("a block has at least one rank"),
        })
    }
}
