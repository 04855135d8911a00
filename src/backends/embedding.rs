//! `embedding`: sentence embeddings from a sentence-transformers BERT-family
//! folder (all-MiniLM-L6-v2 and its kin), with candle, on the CPU or CUDA.
//!
//! ```text
//!  folder: config.json (BERT), tokenizer.json, model.safetensors (mmap),
//!          sentence_bert_config.json (max_seq_length), modules.json
//!          (Normalize?), 1_Pooling/config.json (mean | cls)
//!  batch → tokenize (truncate at max_seq_length, no fixed padding)
//!        → sort rows by length → micro-batches padded to their own longest
//!        → BertModel → pooling → L2 normalisation → results in input order
//! ```
//!
//! Rows: `{"id": any?, "text": string}` (names configurable); results:
//! `{"id":…,"embedding":[…]}`, each float the shortest text that reads back
//! as the same f32.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config as BertConfig};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use stook_actors::{Backend, Device, Model, ModelError, RequestBatch, RequestSchema, ResultWriter};
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::config::ConfigProblem;
use crate::registry::BackendOptions;

/// `[model.options]` of `embedding`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingOptions {
    /// A sentence-transformers folder (relative to the config file).
    pub path: PathBuf,
    /// The text field's name.
    #[serde(default = "default_text")]
    pub text_field: String,
    /// The id field's name.
    #[serde(default = "default_id")]
    pub id_field: String,
    /// Overrides the folder's max_seq_length.
    #[serde(default)]
    pub max_seq_length: Option<usize>,
    /// Overrides whether vectors are L2-normalised (the folder's
    /// modules.json says by default).
    #[serde(default)]
    pub normalize: Option<bool>,
    /// The most rows in one forward pass, after sorting a batch's rows by
    /// length.
    #[serde(default = "default_micro_batch")]
    pub micro_batch: usize,
    /// The most padded tokens (rows × longest) in one forward pass: short
    /// texts go many to a pass, long ones few, so little is padding.
    #[serde(default = "default_micro_tokens")]
    pub micro_batch_tokens: usize,
}

fn default_text() -> String {
    "text".into()
}
fn default_id() -> String {
    "id".into()
}
fn default_micro_batch() -> usize {
    64
}
fn default_micro_tokens() -> usize {
    4096
}

/// How token vectors become one sentence vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pooling {
    /// The mean over real (unpadded) tokens.
    Mean,
    /// The first token's vector.
    Cls,
}

/// What a sentence-transformers folder says, read and checked.
#[derive(Clone, Debug)]
pub struct ModelFolder {
    /// The folder.
    pub dir: PathBuf,
    /// BERT's config.
    pub bert: BertConfig,
    /// Tokens kept per text.
    pub max_seq_length: usize,
    /// Pooling.
    pub pooling: Pooling,
    /// L2-normalise.
    pub normalize: bool,
    /// The vectors' dimension.
    pub dim: usize,
}

fn read_json<T: serde::de::DeserializeOwned>(dir: &Path, name: &str) -> Result<T, ConfigProblem> {
    let p = dir.join(name);
    let text = std::fs::read(&p).map_err(|e| {
        ConfigProblem::new(
            "model.options.path",
            format!("{}: {e} (expected a sentence-transformers folder; scripts/fetch-model.sh makes one)", p.display()),
        )
    })?;
    serde_json::from_slice(&text)
        .map_err(|e| ConfigProblem::new("model.options.path", format!("{}: {e}", p.display())))
}

impl ModelFolder {
    /// Reads and checks `dir`.
    pub fn read(dir: &Path, opts: &EmbeddingOptions) -> Result<Self, ConfigProblem> {
        #[derive(Deserialize)]
        struct Arch {
            #[serde(default)]
            architectures: Vec<String>,
            #[serde(default)]
            model_type: Option<String>,
        }
        let arch: Arch = read_json(dir, "config.json")?;
        let is_bert = arch.model_type.as_deref() == Some("bert")
            || arch.architectures.iter().any(|a| a.starts_with("Bert"));
        if !is_bert {
            return Err(ConfigProblem::new(
                "model.options.path",
                format!(
                    "{}: unsupported architecture {:?} (model_type {:?}); expected a BERT model",
                    dir.join("config.json").display(),
                    arch.architectures,
                    arch.model_type
                ),
            ));
        }
        let bert: BertConfig = read_json(dir, "config.json")?;
        #[derive(Deserialize)]
        struct St {
            max_seq_length: usize,
        }
        let st: St = read_json(dir, "sentence_bert_config.json")?;
        #[derive(Deserialize)]
        struct Module {
            #[serde(rename = "type")]
            kind: String,
        }
        let modules: Vec<Module> = read_json(dir, "modules.json")?;
        #[derive(Deserialize)]
        struct PoolingCfg {
            word_embedding_dimension: usize,
            #[serde(default)]
            pooling_mode_cls_token: bool,
            #[serde(default)]
            pooling_mode_mean_tokens: bool,
        }
        let pool: PoolingCfg = read_json(dir, "1_Pooling/config.json")?;
        let pooling = match (pool.pooling_mode_mean_tokens, pool.pooling_mode_cls_token) {
            (true, false) => Pooling::Mean,
            (false, true) => Pooling::Cls,
            _ => {
                return Err(ConfigProblem::new(
                    "model.options.path",
                    format!(
                        "{}: unsupported pooling (expected exactly one of mean or cls tokens)",
                        dir.join("1_Pooling/config.json").display()
                    ),
                ))
            }
        };
        for f in ["model.safetensors", "tokenizer.json"] {
            if !dir.join(f).is_file() {
                return Err(ConfigProblem::new(
                    "model.options.path",
                    format!(
                        "{}: missing (expected a sentence-transformers folder)",
                        dir.join(f).display()
                    ),
                ));
            }
        }
        let max_seq_length = opts
            .max_seq_length
            .unwrap_or(st.max_seq_length)
            .min(bert.max_position_embeddings);
        Ok(ModelFolder {
            dir: dir.to_path_buf(),
            max_seq_length,
            pooling,
            normalize: opts
                .normalize
                .unwrap_or_else(|| modules.iter().any(|m| m.kind.ends_with("Normalize"))),
            dim: pool.word_embedding_dimension,
            bert,
        })
    }
}

/// The embedding backend.
pub struct Embedding {
    opts: EmbeddingOptions,
    folder: ModelFolder,
}

/// Builds `embedding` from its options; reads the folder, loads nothing.
pub fn create(options: &BackendOptions) -> Result<Arc<dyn Backend>, Vec<ConfigProblem>> {
    let opts: EmbeddingOptions = options.parse()?;
    if opts.micro_batch == 0 {
        return Err(vec![ConfigProblem::new(
            "model.options.micro_batch",
            "expected at least 1, found 0",
        )]);
    }
    if opts.micro_batch_tokens == 0 {
        return Err(vec![ConfigProblem::new(
            "model.options.micro_batch_tokens",
            "expected at least 1, found 0",
        )]);
    }
    let folder = ModelFolder::read(&opts.path, &opts).map_err(|p| vec![p])?;
    Ok(Arc::new(Embedding { opts, folder }))
}

fn model_error(what: &str) -> impl Fn(candle_core::Error) -> ModelError + '_ {
    move |e| ModelError::new(format!("{what}: {e}"))
}

impl Backend for Embedding {
    fn schema(&self) -> RequestSchema {
        RequestSchema::text_with_id(&self.opts.text_field, &self.opts.id_field)
    }

    fn result_bytes_bound(&self, rows: usize, input_bytes: usize) -> usize {
        // `{"id":…,"embedding":[…]}`: at most 16 bytes a float (sign, 9
        // digits, point, exponent) and a comma.
        rows * (32 + self.folder.dim * 17) + input_bytes
    }

    fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        for f in [
            "config.json",
            "tokenizer.json",
            "model.safetensors",
            "1_Pooling/config.json",
            "modules.json",
        ] {
            if let Ok(mut file) = std::fs::File::open(self.folder.dir.join(f)) {
                let mut buf = vec![0u8; 1 << 20];
                while let Ok(n @ 1..) = std::io::Read::read(&mut file, &mut buf) {
                    h.update(&buf[..n]);
                }
            }
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    fn load(&self, device: &Device) -> Result<Arc<dyn Model>, ModelError> {
        let dev = match device {
            Device::Cpu => candle_core::Device::Cpu,
            Device::Cuda(i) => candle_core::Device::new_cuda(*i as usize).map_err(|e| {
                ModelError::new(format!(
                    "cuda:{i}: {e} (is stook built with --features cuda?)"
                ))
            })?,
        };
        let weights = self.folder.dir.join("model.safetensors");
        // SAFETY: the weights file is mapped read-only; it must not change
        // while stook runs (its checksum is in the manifest's fingerprint).
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, &dev) }
            .map_err(model_error("model.safetensors"))?;
        let bert = BertModel::load(vb, &self.folder.bert).map_err(model_error("loading BERT"))?;
        let mut tokenizer = Tokenizer::from_file(self.folder.dir.join("tokenizer.json"))
            .map_err(|e| ModelError::new(format!("tokenizer.json: {e}")))?;
        // The folder's tokenizer.json fixes padding and truncation at 128;
        // sentence-transformers ignores that: it truncates at
        // max_seq_length and pads to the longest in a batch. So do we.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: self.folder.max_seq_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| ModelError::new(format!("tokenizer.json: {e}")))?;
        Ok(Arc::new(EmbeddingModel {
            bert,
            tokenizer,
            device: dev,
            folder: self.folder.clone(),
            micro_batch: self.opts.micro_batch,
            micro_tokens: self.opts.micro_batch_tokens,
        }))
    }
}

struct EmbeddingModel {
    bert: BertModel,
    tokenizer: Tokenizer,
    device: candle_core::Device,
    folder: ModelFolder,
    micro_batch: usize,
    micro_tokens: usize,
}

/// Cuts rows sorted by length into passes of at most `max_rows` rows and
/// `max_tokens` padded tokens (a pass pads to its longest, its last row).
fn passes(
    sorted_lens: &[usize],
    max_rows: usize,
    max_tokens: usize,
) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, &len) in sorted_lens.iter().enumerate() {
        let rows = i + 1 - start;
        if rows > 1 && (rows > max_rows || rows * len.max(1) > max_tokens) {
            out.push(start..i);
            start = i;
        }
    }
    if start < sorted_lens.len() {
        out.push(start..sorted_lens.len());
    }
    out
}

impl EmbeddingModel {
    /// Embeddings of `texts`, in order.
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, ModelError> {
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| ModelError::new(format!("tokenizing: {e}")))?;
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| encodings[i].get_ids().len());
        let mut out = vec![Vec::new(); texts.len()];
        let lens: Vec<usize> = order
            .iter()
            .map(|&i| encodings[i].get_ids().len())
            .collect();
        for range in passes(&lens, self.micro_batch, self.micro_tokens) {
            let chunk = &order[range];
            let len = chunk
                .iter()
                .map(|&i| encodings[i].get_ids().len())
                .max()
                .unwrap_or(1)
                .max(1);
            let n = chunk.len();
            let mut ids = vec![0u32; n * len];
            let mut mask = vec![0u32; n * len];
            for (r, &i) in chunk.iter().enumerate() {
                for (c, &t) in encodings[i].get_ids().iter().enumerate() {
                    ids[r * len + c] = t;
                    mask[r * len + c] = 1;
                }
            }
            let vectors = self
                .forward(ids, mask, n, len)
                .map_err(model_error("forward"))?;
            for (r, &i) in chunk.iter().enumerate() {
                out[i] = vectors[r].clone();
            }
        }
        Ok(out)
    }

    fn forward(
        &self,
        ids: Vec<u32>,
        mask: Vec<u32>,
        n: usize,
        len: usize,
    ) -> candle_core::Result<Vec<Vec<f32>>> {
        let ids = Tensor::from_vec(ids, (n, len), &self.device)?;
        let mask = Tensor::from_vec(mask, (n, len), &self.device)?;
        let types = ids.zeros_like()?;
        let hidden = self.bert.forward(&ids, &types, Some(&mask))?; // (n, len, dim)
        let pooled = match self.folder.pooling {
            Pooling::Mean => {
                let m = mask.to_dtype(DType::F32)?.unsqueeze(2)?; // (n, len, 1)
                let summed = hidden.broadcast_mul(&m)?.sum(1)?; // (n, dim)
                let counts = m.sum(1)?.clamp(1e-9, f64::MAX)?; // (n, 1)
                summed.broadcast_div(&counts)?
            }
            Pooling::Cls => hidden.narrow(1, 0, 1)?.squeeze(1)?,
        };
        let pooled = if self.folder.normalize {
            let norm = pooled
                .sqr()?
                .sum_keepdim(1)?
                .sqrt()?
                .clamp(1e-12, f64::MAX)?;
            pooled.broadcast_div(&norm)?
        } else {
            pooled
        };
        pooled.to_vec2::<f32>()
    }
}

impl Model for EmbeddingModel {
    fn predict(&self, batch: &RequestBatch, out: &mut ResultWriter) -> Result<(), ModelError> {
        let texts: Vec<&str> = (0..batch.len())
            .map(|i| batch.field(0, i).unwrap_or_default())
            .collect();
        let vectors = self.embed(&texts)?;
        for (i, v) in vectors.iter().enumerate() {
            if let Some(bad) = v.iter().find(|x| !x.is_finite()) {
                return Err(ModelError::for_row(
                    batch.row(i),
                    format!("the model produced {bad}"),
                ));
            }
            let id = batch.field(1, i);
            out.push_with(batch.row(i), |w| {
                w.write_char('{')?;
                if let Some(id) = id {
                    write!(w, "\"id\":{id},")?;
                }
                w.write_str("\"embedding\":[")?;
                for (k, x) in v.iter().enumerate() {
                    if k > 0 {
                        w.write_char(',')?;
                    }
                    // Rust prints the shortest text that reads back as the same f32.
                    write!(w, "{x}")?;
                }
                w.write_str("]}")
            })
            .map_err(|_| ModelError::new("formatting a result failed"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::passes;

    #[test]
    fn passes_pack_short_rows_and_isolate_long_ones() {
        let lens = [5, 5, 6, 8, 10, 12, 100, 256];
        let p = passes(&lens, 64, 48);
        assert_eq!(p, vec![0..4, 4..6, 6..7, 7..8]);
        assert_eq!(passes(&lens, 2, 1 << 20), vec![0..2, 2..4, 4..6, 6..8]);
        assert!(passes(&[], 4, 4).is_empty());
    }
}
