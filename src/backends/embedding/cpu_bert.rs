//! The BERT encoder on the CPU in f32, on plain buffers: the same weights
//! and the same arithmetic as [`super::bert::Bert`], shaped for the CPU.
//!
//! - No padding: a pass's texts are packed one after another into one
//!   (tokens × hidden) matrix; only attention looks at where each text
//!   starts and ends. A pass costs its real tokens, whatever their lengths.
//! - Every projection is one call of the gemm crate's matrix kernels (the
//!   bias written first into the output, which the kernel accumulates
//!   onto); attention is two small products per text and head on strided
//!   views of the fused query/key/value matrix, with a softmax between.
//! - Activations live in buffers reused from pass to pass (no allocation,
//!   no page faults per op); GELU and residual + layer norm run in place
//!   ([`super::kernels`]).
//! - All of it runs on the model's own rayon pool of `threads` threads.
//!
//! Each text's vector depends on its own tokens only (not on the pass it
//! shares or the number of threads), so results are byte-identical however
//! rows are batched.

use std::sync::{Arc, Mutex};

use candle_core::Tensor;
use gemm::{gemm, Parallelism};
use rayon::prelude::*;

use super::bert::Bert;
use super::kernels::{self, Norm};
use super::{l2_normalize, Pooling};

/// A projection: `y = x · Wᵀ + b`, W (out × in) row-major.
struct Linear {
    w: Vec<f32>,
    b: Vec<f32>,
    out: usize,
    inp: usize,
}

struct Layer {
    qkv: Linear,
    attn_out: Linear,
    attn_norm: Norm,
    up: Linear,
    down: Linear,
    out_norm: Norm,
}

/// Activation buffers of one pass, kept for the next.
#[derive(Default)]
struct Scratch {
    x: Vec<f32>,
    qkv: Vec<f32>,
    ctx: Vec<f32>,
    y: Vec<f32>,
    up: Vec<f32>,
}

/// The first `n` values of `v`, grown (never shrunk) to fit.
fn first(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if v.len() < n {
        v.resize(n, 0.0);
    }
    &mut v[..n]
}

/// The weights as host copies, shared by every model of a backend.
pub struct CpuWeights {
    word: Vec<f32>,
    position: Vec<f32>,
    token_type: Vec<f32>,
    embed_norm: Norm,
    layers: Vec<Layer>,
    heads: usize,
    hidden: usize,
    vocab: usize,
    max_positions: usize,
}

/// A loaded CPU encoder: shared weights, its own threads and buffers.
pub struct CpuBert {
    w: Arc<CpuWeights>,
    pool: rayon::ThreadPool,
    /// Free buffers; concurrent passes (workers sharing the model) each
    /// take one.
    scratch: Mutex<Vec<Scratch>>,
}

fn host(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1()
}

fn linear(l: &candle_nn::Linear) -> candle_core::Result<Linear> {
    let (out, inp) = l.weight().dims2()?;
    Ok(Linear {
        w: host(l.weight())?,
        b: match l.bias() {
            Some(b) => host(b)?,
            None => vec![0.0; out],
        },
        out,
        inp,
    })
}

fn norm(n: &candle_nn::LayerNorm, eps: f64) -> candle_core::Result<Norm> {
    let gamma = host(n.weight())?;
    Ok(Norm {
        beta: match n.bias() {
            Some(b) => host(b)?,
            None => vec![0.0; gamma.len()],
        },
        gamma,
        eps: eps as f32,
    })
}

impl CpuWeights {
    /// Copies `bert`'s weights (loaded on the CPU), dropping each of
    /// candle's tensors once copied, so that the two copies never coexist
    /// whole.
    pub fn new(bert: Bert) -> Result<Self, String> {
        let err = |e: candle_core::Error| e.to_string();
        let w = bert.into_weights();
        let (vocab, hidden) = w.word.dims2().map_err(err)?;
        let word = host(&w.word).map_err(err)?;
        drop(w.word);
        let layers = w
            .layers
            .into_iter()
            .map(|l| {
                Ok(Layer {
                    qkv: linear(&l.qkv)?,
                    attn_out: linear(&l.attn_out)?,
                    attn_norm: norm(&l.attn_norm, w.eps)?,
                    up: linear(&l.up)?,
                    down: linear(&l.down)?,
                    out_norm: norm(&l.out_norm, w.eps)?,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()
            .map_err(err)?;
        Ok(CpuWeights {
            word,
            position: host(&w.position).map_err(err)?,
            token_type: host(&w.token_type.narrow(0, 0, 1).map_err(err)?).map_err(err)?,
            embed_norm: norm(&w.embed_norm, w.eps).map_err(err)?,
            max_positions: w.position.dim(0).map_err(err)?,
            layers,
            heads: w.heads,
            hidden,
            vocab,
        })
    }
}

impl CpuBert {
    /// An encoder over `w` running on its own pool of `threads` threads.
    pub fn new(w: Arc<CpuWeights>, threads: usize) -> Result<Self, String> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("stook-model-{i}"))
            .build()
            .map_err(|e| format!("starting {threads} threads: {e}"))?;
        Ok(CpuBert {
            w,
            pool,
            scratch: Mutex::new(Vec::new()),
        })
    }

    /// One pooled (and, with `normalize`, L2-normalised) vector per text of
    /// token ids.
    pub fn embed(
        &self,
        texts: &[&[u32]],
        pooling: Pooling,
        normalize: bool,
    ) -> Result<Vec<Vec<f32>>, String> {
        let mut offsets = Vec::with_capacity(texts.len() + 1);
        offsets.push(0);
        for t in texts {
            if t.len() > self.w.max_positions {
                return Err(format!(
                    "{} tokens, more than the model's {} positions",
                    t.len(),
                    self.w.max_positions
                ));
            }
            if let Some(id) = t.iter().find(|&&id| id as usize >= self.w.vocab) {
                return Err(format!(
                    "token id {id} outside the vocabulary ({})",
                    self.w.vocab
                ));
            }
            offsets.push(offsets.last().copied().unwrap_or(0) + t.len());
        }
        let mut scratch = self
            .scratch
            .lock()
            .map(|mut free| free.pop())
            .ok()
            .flatten()
            .unwrap_or_default();
        let vectors = self.pool.install(|| {
            let states = self.forward(texts, &offsets, &mut scratch);
            pool(states, &offsets, self.w.hidden, pooling, normalize)
        });
        if let Ok(mut free) = self.scratch.lock() {
            free.push(scratch);
        }
        Ok(vectors)
    }

    /// The last layer's token vectors, (tokens × hidden), texts packed.
    fn forward<'s>(
        &self,
        texts: &[&[u32]],
        offsets: &[usize],
        scratch: &'s mut Scratch,
    ) -> &'s [f32] {
        let (h, tokens) = (self.w.hidden, offsets[offsets.len() - 1]);
        let inter = self.w.layers.first().map_or(0, |l| l.up.out);
        let Scratch { x, qkv, ctx, y, up } = scratch;
        let x = first(x, tokens * h);
        let qkv = first(qkv, tokens * 3 * h);
        let ctx = first(ctx, tokens * h);
        let y = first(y, tokens * h);
        let up = first(up, tokens * inter);
        self.embeddings(texts, offsets, x);
        for l in &self.w.layers {
            self.project(&l.qkv, x, qkv);
            self.attention(qkv, offsets, ctx);
            self.project(&l.attn_out, ctx, y);
            kernels::add_norm(y, x, &l.attn_norm);
            self.project(&l.up, y, up);
            kernels::gelu(up, inter);
            self.project(&l.down, up, x);
            kernels::add_norm(x, y, &l.out_norm);
        }
        x
    }

    /// Word + position + token type (0) vectors, layer-normed.
    fn embeddings(&self, texts: &[&[u32]], offsets: &[usize], x: &mut [f32]) {
        let h = self.w.hidden;
        split_rows(x, offsets, h)
            .into_par_iter()
            .zip(texts.par_iter())
            .for_each(|(rows, ids)| {
                for (p, (row, &id)) in rows.chunks_mut(h).zip(ids.iter()).enumerate() {
                    let word = &self.w.word[id as usize * h..(id as usize + 1) * h];
                    let pos = &self.w.position[p * h..(p + 1) * h];
                    for (((o, &w), &q), &t) in
                        row.iter_mut().zip(word).zip(pos).zip(&self.w.token_type)
                    {
                        *o = w + q + t;
                    }
                }
            });
        kernels::layer_norm(x, &self.w.embed_norm);
    }

    /// `y = x · Wᵀ + b` for every token row of `x`.
    fn project(&self, l: &Linear, x: &[f32], y: &mut [f32]) {
        let rows = x.len() / l.inp;
        y.par_chunks_mut(l.out)
            .with_min_len(64)
            .for_each(|r| r.copy_from_slice(&l.b));
        let par = if rayon::current_num_threads() > 1 {
            Parallelism::Rayon(0)
        } else {
            Parallelism::None
        };
        // SAFETY: x is rows × inp, W out × inp and y rows × out, all
        // row-major and in bounds for the strides given.
        unsafe {
            gemm(
                rows,
                l.out,
                l.inp,
                y.as_mut_ptr(),
                1,
                l.out as isize,
                true,
                x.as_ptr(),
                1,
                l.inp as isize,
                l.w.as_ptr(),
                l.inp as isize,
                1,
                1.0,
                1.0,
                false,
                false,
                false,
                par,
            );
        }
    }

    /// Self-attention of each text over its own tokens: per head, scores
    /// = Q·Kᵀ/√d, softmax, then · V, into `ctx` (tokens × hidden, heads
    /// side by side).
    fn attention(&self, qkv: &[f32], offsets: &[usize], ctx: &mut [f32]) {
        let (h, heads) = (self.w.hidden, self.w.heads);
        let d = h / heads;
        let scale = 1.0 / (d as f32).sqrt();
        let starts = &offsets[..offsets.len() - 1];
        split_rows(ctx, offsets, h)
            .into_par_iter()
            .zip(starts.par_iter())
            .for_each_init(Vec::new, |scores, (out, &start)| {
                let len = out.len() / h;
                if len == 0 {
                    return;
                }
                let scores = first(scores, len * len);
                let base = &qkv[start * 3 * h..(start + len) * 3 * h];
                for head in 0..heads {
                    let q = base[head * d..].as_ptr();
                    let k = base[h + head * d..].as_ptr();
                    let v = base[2 * h + head * d..].as_ptr();
                    // SAFETY: q, k and v are len rows of d values at a row
                    // stride of 3h inside `base`; scores is len × len; out
                    // is len rows of h values, this head's d at head × d.
                    unsafe {
                        gemm(
                            len,
                            len,
                            d,
                            scores.as_mut_ptr(),
                            1,
                            len as isize,
                            false,
                            q,
                            1,
                            3 * h as isize,
                            k,
                            3 * h as isize,
                            1,
                            0.0,
                            scale,
                            false,
                            false,
                            false,
                            Parallelism::None,
                        );
                        kernels::softmax(scores, len);
                        gemm(
                            len,
                            d,
                            len,
                            out[head * d..].as_mut_ptr(),
                            1,
                            h as isize,
                            false,
                            scores.as_ptr(),
                            1,
                            len as isize,
                            v,
                            1,
                            3 * h as isize,
                            0.0,
                            1.0,
                            false,
                            false,
                            false,
                            Parallelism::None,
                        );
                    }
                }
            });
    }
}

/// `buf` (rows of `width`) cut into each text's rows.
fn split_rows<'a>(mut buf: &'a mut [f32], offsets: &[usize], width: usize) -> Vec<&'a mut [f32]> {
    offsets
        .windows(2)
        .map(|w| {
            let (rows, rest) = std::mem::take(&mut buf).split_at_mut((w[1] - w[0]) * width);
            buf = rest;
            rows
        })
        .collect()
}

/// Each text's vector from its token vectors: their mean or the first
/// (CLS), then L2-normalised if asked.
fn pool(
    states: &[f32],
    offsets: &[usize],
    h: usize,
    pooling: Pooling,
    normalize: bool,
) -> Vec<Vec<f32>> {
    offsets
        .par_windows(2)
        .map(|w| {
            let rows = &states[w[0] * h..w[1] * h];
            let mut v = vec![0f32; h];
            match pooling {
                Pooling::Mean => {
                    for row in rows.chunks(h) {
                        v.iter_mut().zip(row).for_each(|(v, &x)| *v += x);
                    }
                    let n = (w[1] - w[0]).max(1) as f32;
                    v.iter_mut().for_each(|x| *x /= n);
                }
                Pooling::Cls => {
                    if let Some(first) = rows.chunks(h).next() {
                        v.copy_from_slice(first);
                    }
                }
            }
            if normalize {
                l2_normalize(&mut v);
            }
            v
        })
        .collect()
}
