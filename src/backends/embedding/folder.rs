//! A sentence-transformers folder: what it says, read and checked before
//! any weight is loaded.

use std::path::{Path, PathBuf};

use candle_transformers::models::bert::Config as BertConfig;
use serde::Deserialize;

use super::EmbeddingOptions;
use crate::config::ConfigProblem;

/// Divides `v` by its L2 norm (at least 1e-12, as sentence-transformers).
pub fn l2_normalize(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= n);
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

pub(super) fn read_json<T: serde::de::DeserializeOwned>(
    dir: &Path,
    name: &str,
) -> Result<T, ConfigProblem> {
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
