//! The BERT encoder of sentence-transformers models, on candle, loading
//! the same weights as Hugging Face's `BertModel`.
//!
//! Against candle-transformers' stock `BertModel`: the attention mask is a
//! finite bias in the model's dtype (the stock one multiplies by f32::MIN,
//! which is −inf in f16/bf16 and turns padded rows into NaN); query, key and
//! value are one matrix product; activations stay (tokens, hidden) matrices
//! (no broadcast products, no transposes around the projections); and on
//! the CPU in f32, attention, bias + GELU and bias + residual + layer norm
//! are the fused kernels of [`super::kernels`].

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{layer_norm, linear, LayerNorm, Linear, VarBuilder};
use candle_transformers::models::bert::{Config, HiddenAct};

use super::kernels;

/// Added to a padded key's score: e^−10000 is 0 in every float type, and
/// −10000 is finite in f16 and bf16.
const MASKED: f32 = -10_000.0;

struct Layer {
    qkv: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    up: Linear,
    down: Linear,
    out_norm: LayerNorm,
    /// The CPU f32 kernels' copies of biases and norms, when they run.
    fused: Option<Fused>,
}

/// A layer's fused steps after its three projections.
struct Fused {
    attn: kernels::AddNorm,
    up: kernels::BiasGelu,
    out: kernels::AddNorm,
}

fn host(t: &Tensor) -> Result<Vec<f32>> {
    t.to_dtype(DType::F32)?.to_vec1()
}

/// `LayerNorm(y + linear's bias + residual)` as one kernel.
fn add_norm(linear: &Linear, norm: &VarBuilder, eps: f64) -> Result<kernels::AddNorm> {
    let h = linear.weight().dim(0)?;
    Ok(kernels::AddNorm {
        bias: linear.bias().map(host).transpose()?.unwrap_or(vec![0.0; h]),
        gamma: host(&norm.get(h, "weight")?)?,
        beta: host(&norm.get(h, "bias")?)?,
        eps: eps as f32,
    })
}

/// A loaded encoder.
pub struct Bert {
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    embed_norm: LayerNorm,
    layers: Vec<Layer>,
    heads: usize,
    hidden: usize,
    act: HiddenAct,
    device: Device,
    dtype: DType,
}

impl Bert {
    /// Loads the weights under `vb` (with or without a `bert.` prefix).
    pub fn load(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        let vb = if vb.contains_tensor("bert.embeddings.word_embeddings.weight") {
            vb.pp("bert")
        } else {
            vb
        };
        let h = cfg.hidden_size;
        if cfg.num_attention_heads == 0 || !h.is_multiple_of(cfg.num_attention_heads) {
            candle_core::bail!(
                "hidden_size {h} is not a multiple of num_attention_heads {}",
                cfg.num_attention_heads
            );
        }
        let e = vb.pp("embeddings");
        let word = e.get((cfg.vocab_size, h), "word_embeddings.weight")?;
        let position = e.get(
            (cfg.max_position_embeddings, h),
            "position_embeddings.weight",
        )?;
        let token_type = e.get((cfg.type_vocab_size, h), "token_type_embeddings.weight")?;
        let embed_norm = layer_norm(h, cfg.layer_norm_eps, e.pp("LayerNorm"))?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let l = vb.pp(format!("encoder.layer.{i}"));
            let a = l.pp("attention");
            let (mut w, mut b) = (Vec::new(), Vec::new());
            for part in ["query", "key", "value"] {
                w.push(a.get((h, h), &format!("self.{part}.weight"))?);
                b.push(a.get(h, &format!("self.{part}.bias"))?);
            }
            let qkv = Linear::new(Tensor::cat(&w, 0)?, Some(Tensor::cat(&b, 0)?));
            let attn_out = linear(h, h, a.pp("output.dense"))?;
            let up = linear(h, cfg.intermediate_size, l.pp("intermediate.dense"))?;
            let down = linear(cfg.intermediate_size, h, l.pp("output.dense"))?;
            let fused = if vb.device().is_cpu()
                && vb.dtype() == DType::F32
                && cfg.hidden_act == HiddenAct::Gelu
            {
                Some(Fused {
                    attn: add_norm(&attn_out, &a.pp("output.LayerNorm"), cfg.layer_norm_eps)?,
                    up: kernels::BiasGelu {
                        bias: up.bias().map(host).transpose()?.unwrap_or_default(),
                    },
                    out: add_norm(&down, &l.pp("output.LayerNorm"), cfg.layer_norm_eps)?,
                })
            } else {
                None
            };
            layers.push(Layer {
                qkv,
                attn_out,
                attn_norm: layer_norm(h, cfg.layer_norm_eps, a.pp("output.LayerNorm"))?,
                up,
                down,
                out_norm: layer_norm(h, cfg.layer_norm_eps, l.pp("output.LayerNorm"))?,
                fused,
            });
        }
        Ok(Bert {
            word,
            position,
            token_type,
            embed_norm,
            layers,
            heads: cfg.num_attention_heads,
            hidden: h,
            act: cfg.hidden_act,
            device: vb.device().clone(),
            dtype: vb.dtype(),
        })
    }

    /// Whether the fused CPU kernels run (the CPU, in f32).
    fn fused(&self) -> bool {
        self.device.is_cpu() && self.dtype == DType::F32
    }

    /// Token vectors (rows, len, hidden) for `ids` (rows × len, row-major,
    /// each row's real tokens first, then padding); `lens` are the real
    /// token counts. Token types are all 0 (single sentences).
    pub fn forward(&self, ids: &[u32], lens: &[usize], len: usize) -> Result<Tensor> {
        let rows = lens.len();
        let ids = Tensor::from_slice(ids, rows * len, &self.device)?;
        let x = self
            .word
            .index_select(&ids, 0)?
            .reshape((rows, len, self.hidden))?
            .broadcast_add(&self.position.narrow(0, 0, len)?)?
            .broadcast_add(&self.token_type.narrow(0, 0, 1)?)?
            .reshape((rows * len, self.hidden))?;
        let mut x = self.embed_norm.forward(&x)?;
        let bias = if self.fused() {
            None
        } else {
            let mut b = vec![0f32; rows * len];
            for (r, &n) in lens.iter().enumerate() {
                b[r * len + n.min(len)..(r + 1) * len].fill(MASKED);
            }
            Some(Tensor::from_vec(b, (rows, 1, 1, len), &self.device)?.to_dtype(self.dtype)?)
        };
        for layer in &self.layers {
            let qkv = layer.qkv.forward(&x)?;
            let ctx = match &bias {
                None => qkv.apply_op1_no_bwd(&kernels::Attention {
                    lens: lens.to_vec(),
                    len,
                    heads: self.heads,
                })?,
                Some(bias) => self.attention(&qkv, bias, rows, len)?,
            };
            if let Some(f) = &layer.fused {
                let product = |x: &Tensor, l: &Linear| x.matmul(&l.weight().t()?);
                let a = product(&ctx, &layer.attn_out)?.apply_op2_no_bwd(&x, &f.attn)?;
                let up = product(&a, &layer.up)?.apply_op1_no_bwd(&f.up)?;
                x = product(&up, &layer.down)?.apply_op2_no_bwd(&a, &f.out)?;
                continue;
            }
            let a = layer
                .attn_norm
                .forward(&(layer.attn_out.forward(&ctx)? + &x)?)?;
            let up = layer.up.forward(&a)?;
            let up = match self.act {
                HiddenAct::Gelu => up.gelu_erf()?,
                HiddenAct::GeluApproximate => up.gelu()?,
                HiddenAct::Relu => up.relu()?,
            };
            x = layer.out_norm.forward(&(layer.down.forward(&up)? + &a)?)?;
        }
        x.reshape((rows, len, self.hidden))
    }

    /// Attention with candle's ops (GPUs, half precision).
    fn attention(&self, qkv: &Tensor, bias: &Tensor, rows: usize, len: usize) -> Result<Tensor> {
        let d = self.hidden / self.heads;
        let split = |i: usize| {
            qkv.narrow(1, i * self.hidden, self.hidden)?
                .reshape((rows, len, self.heads, d))?
                .transpose(1, 2)?
                .contiguous()
        };
        let (q, k, v) = (split(0)?, split(1)?, split(2)?);
        let scores = (q.matmul(&k.t()?)? * (1.0 / (d as f64).sqrt()))?.broadcast_add(bias)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        probs
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((rows * len, self.hidden))
    }
}
