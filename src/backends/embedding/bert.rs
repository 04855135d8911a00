//! The BERT encoder of sentence-transformers models, on candle, loading
//! the same weights as Hugging Face's `BertModel`.
//!
//! Against candle-transformers' stock `BertModel`: the attention mask is a
//! finite bias in the model's dtype (the stock one multiplies by f32::MIN,
//! which is −inf in f16/bf16 and turns padded rows into NaN); query, key and
//! value are one matrix product; and activations stay (tokens, hidden)
//! matrices (no broadcast products, no transposes around the projections).
//! On the CPU in f32 the same weights run in [`super::cpu_bert`] instead.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{layer_norm, linear, LayerNorm, Linear, VarBuilder};
use candle_transformers::models::bert::{Config, HiddenAct};

use super::packed;

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
}

/// What the packed passes take besides the weights: biases, and each
/// layer norm's parameters beside the bias before it.
struct PackedParams {
    /// The first token type's vector | the embeddings' norm scale | shift.
    embed: Tensor,
    layers: Vec<PackedLayer>,
}

struct PackedLayer {
    qkv_bias: Tensor,
    /// The output projection's bias | the norm's scale | its shift.
    attn: Tensor,
    up_bias: Tensor,
    /// The same for the layer's end.
    out: Tensor,
}

/// `bias | gamma | beta` of a projection followed by a layer norm, as one
/// vector ([`packed::AddNorm`]'s parameters); None if one is missing.
fn add_norm_params(bias: Option<&Tensor>, norm: &LayerNorm) -> Result<Option<Tensor>> {
    match (bias, norm.bias()) {
        (Some(b), Some(beta)) => Ok(Some(Tensor::cat(&[b, norm.weight(), beta], 0)?)),
        _ => Ok(None),
    }
}

impl PackedParams {
    /// The parameters, or None when a bias or a norm shift is missing.
    fn new(token_type: &Tensor, embed_norm: &LayerNorm, layers: &[Layer]) -> Result<Option<Self>> {
        let Some(embed) = add_norm_params(Some(&token_type.get(0)?), embed_norm)? else {
            return Ok(None);
        };
        let mut packed = Vec::with_capacity(layers.len());
        for l in layers {
            let (Some(qkv_bias), Some(up_bias)) = (l.qkv.bias(), l.up.bias()) else {
                return Ok(None);
            };
            let attn = add_norm_params(l.attn_out.bias(), &l.attn_norm)?;
            let out = add_norm_params(l.down.bias(), &l.out_norm)?;
            let (Some(attn), Some(out)) = (attn, out) else {
                return Ok(None);
            };
            packed.push(PackedLayer {
                qkv_bias: qkv_bias.clone(),
                attn,
                up_bias: up_bias.clone(),
                out,
            });
        }
        Ok(Some(PackedParams {
            embed,
            layers: packed,
        }))
    }
}

/// A loaded encoder's weights, taken apart.
pub struct Weights {
    /// Word vectors (vocab × hidden).
    pub word: Tensor,
    /// Position vectors (positions × hidden).
    pub position: Tensor,
    /// Token type vectors (types × hidden).
    pub token_type: Tensor,
    /// The embeddings' layer norm.
    pub embed_norm: LayerNorm,
    /// The layers, in order.
    pub layers: Vec<LayerWeights>,
    /// Attention heads.
    pub heads: usize,
    /// Every layer norm's epsilon.
    pub eps: f64,
}

/// One layer's weights (query, key and value as one).
pub struct LayerWeights {
    /// Query, key and value projections as one.
    pub qkv: Linear,
    /// Attention output projection.
    pub attn_out: Linear,
    /// Layer norm after attention.
    pub attn_norm: LayerNorm,
    /// Intermediate (up) projection.
    pub up: Linear,
    /// Output (down) projection.
    pub down: Linear,
    /// Layer norm at the layer's end.
    pub out_norm: LayerNorm,
}

/// A loaded encoder.
pub struct Bert {
    /// Made by [`Bert::prepare_packed`] for models that run packed passes.
    packed: Option<PackedParams>,
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    embed_norm: LayerNorm,
    layers: Vec<Layer>,
    heads: usize,
    hidden: usize,
    act: HiddenAct,
    eps: f64,
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
            layers.push(Layer {
                qkv,
                attn_out,
                attn_norm: layer_norm(h, cfg.layer_norm_eps, a.pp("output.LayerNorm"))?,
                up,
                down,
                out_norm: layer_norm(h, cfg.layer_norm_eps, l.pp("output.LayerNorm"))?,
            });
        }
        Ok(Bert {
            packed: None,
            word,
            position,
            token_type,
            embed_norm,
            layers,
            heads: cfg.num_attention_heads,
            hidden: h,
            act: cfg.hidden_act,
            eps: cfg.layer_norm_eps,
            device: vb.device().clone(),
            dtype: vb.dtype(),
        })
    }

    /// The weights, taken apart.
    pub fn into_weights(self) -> Weights {
        Weights {
            word: self.word,
            position: self.position,
            token_type: self.token_type,
            embed_norm: self.embed_norm,
            layers: self
                .layers
                .into_iter()
                .map(|l| LayerWeights {
                    qkv: l.qkv,
                    attn_out: l.attn_out,
                    attn_norm: l.attn_norm,
                    up: l.up,
                    down: l.down,
                    out_norm: l.out_norm,
                })
                .collect(),
            heads: self.heads,
            eps: self.eps,
        }
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
        let mut b = vec![0f32; rows * len];
        for (r, &n) in lens.iter().enumerate() {
            b[r * len + n.min(len)..(r + 1) * len].fill(MASKED);
        }
        let bias = Tensor::from_vec(b, (rows, 1, 1, len), &self.device)?.to_dtype(self.dtype)?;
        for layer in &self.layers {
            let qkv = layer.qkv.forward(&x)?;
            let ctx = self.attention(&qkv, &bias, rows, len)?;
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

    /// Readies [`Bert::forward_packed`]; false (and nothing made) when
    /// there are no kernels for this model: they need head size 32 or 64,
    /// exact GELU, and biases and norm shifts throughout.
    pub fn prepare_packed(&mut self) -> Result<bool> {
        if packed::HEAD_SIZES.contains(&(self.hidden / self.heads))
            && self.hidden <= packed::NORM_COLS
            && self.act == HiddenAct::Gelu
        {
            self.packed = PackedParams::new(&self.token_type, &self.embed_norm, &self.layers)?;
        }
        Ok(self.packed.is_some())
    }

    /// Pooled f32 vectors (texts × hidden) of texts packed end to end:
    /// `ids` holds every text's tokens, text `s` at `starts[s] ..
    /// starts[s + 1]`; no padding, so no mask. The mean of each text's
    /// token vectors, or its first (`cls`).
    pub fn forward_packed(&self, ids: &[u32], starts: &[u32], cls: bool) -> Result<Tensor> {
        let longest = starts.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
        let positions: Vec<u32> = starts.windows(2).flat_map(|w| 0..w[1] - w[0]).collect();
        let tokens = ids.len();
        let starts = Tensor::from_slice(starts, starts.len(), &self.device)?;
        let ids = Tensor::from_slice(ids, tokens, &self.device)?;
        let positions = Tensor::from_vec(positions, tokens, &self.device)?;
        let Some(params) = &self.packed else {
            candle_core::bail!("internal: packed pass on a model not prepared for it")
        };
        let norm = packed::AddNorm {
            eps: self.eps as f32,
        };
        let attention = packed::Attention {
            heads: self.heads,
            longest: longest as usize,
        };
        // Each projection is a plain product; its bias goes into the next
        // op: attention, bias + GELU, or bias + residual + layer norm.
        let project = |x: &Tensor, l: &Linear| x.matmul(&l.weight().t()?);
        let mut x = self.word.index_select(&ids, 0)?.apply_op3_no_bwd(
            &self.position.index_select(&positions, 0)?,
            &params.embed,
            &norm,
        )?;
        for (l, p) in self.layers.iter().zip(&params.layers) {
            let ctx = project(&x, &l.qkv)?.apply_op3_no_bwd(&p.qkv_bias, &starts, &attention)?;
            let a = project(&ctx, &l.attn_out)?.apply_op3_no_bwd(&x, &p.attn, &norm)?;
            let up = project(&a, &l.up)?.apply_op2_no_bwd(&p.up_bias, &packed::BiasGelu)?;
            x = project(&up, &l.down)?.apply_op3_no_bwd(&a, &p.out, &norm)?;
        }
        x.apply_op2_no_bwd(&starts, &packed::Pool { cls })
    }

    /// Attention with candle's ops.
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
