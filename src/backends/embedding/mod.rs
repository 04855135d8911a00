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

mod bert;
mod cpu_bert;
mod folder;
mod kernels;
mod model;
mod options;
#[doc(hidden)]
pub mod packed; // public for `stook bench kernels` only
mod predict;
mod stages;

pub use folder::{l2_normalize, ModelFolder, Pooling};
pub use options::{Attention, EmbeddingOptions, MicroBatch, Precision, Schema};
pub use stages::{stage_times, StageTimes};

use std::sync::{Arc, Mutex, Weak};

use candle_nn::VarBuilder;
use candle_transformers::models::bert::HiddenAct;
use sha2::{Digest, Sha256};
use stook_actors::{Backend, Device, Model, ModelError, RequestSchema};
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::backends::{openai, sheaf};
use crate::config::ConfigProblem;
use crate::registry::BackendOptions;
use bert::Bert;
use cpu_bert::{CpuBert, CpuWeights};
use model::{text_columns, EmbeddingModel, Encoder};

/// The embedding backend.
pub struct Embedding {
    opts: EmbeddingOptions,
    folder: ModelFolder,
    /// CPU threads per model.
    threads: usize,
    /// The CPU models' weights, loaded by the first and shared while any
    /// model holds them.
    cpu_weights: Mutex<Weak<CpuWeights>>,
}

/// Builds `embedding` from its options; reads the folder, loads nothing.
pub fn create(options: &BackendOptions) -> Result<Arc<dyn Backend>, Vec<ConfigProblem>> {
    let opts: EmbeddingOptions = options.parse()?;
    // Every problem at once, each with its key.
    let mut problems = Vec::new();
    for (key, value, unit) in [
        ("micro_batch", opts.micro_batch, ""),
        ("micro_batch_tokens", opts.micro_batch_tokens, ""),
        ("max_seq_length", opts.max_seq_length, " token"),
        ("threads", opts.threads, ""),
    ] {
        if value == Some(0) {
            let hint = if key == "threads" {
                " (leave it out to use every core)"
            } else {
                ""
            };
            problems.push(ConfigProblem::new(
                format!("model.options.{key}"),
                format!("expected at least 1{unit}, found 0{hint}"),
            ));
        }
    }
    match ModelFolder::read(&opts.path, &opts) {
        Ok(folder) if problems.is_empty() => {
            Ok(Arc::new(Embedding::new(opts, folder, options.cpu_models())))
        }
        Ok(_) => Err(problems),
        Err(p) => {
            problems.push(p);
            Err(problems)
        }
    }
}

/// candle's device for `device`; an error names the GPU and, in a build
/// without the `cuda` feature, says so.
pub fn candle_device(device: &Device) -> Result<candle_core::Device, String> {
    match device {
        Device::Cpu => Ok(candle_core::Device::Cpu),
        Device::Cuda(i) => candle_core::Device::new_cuda(*i as usize).map_err(|e| {
            let built = if cfg!(feature = "cuda") {
                ""
            } else {
                " (stook was built without --features cuda)"
            };
            format!("cuda:{i}: {e}{built}")
        }),
    }
}

fn model_error(what: &str) -> impl Fn(candle_core::Error) -> ModelError + '_ {
    move |e| ModelError::new(format!("{what}: {e}"))
}

impl Backend for Embedding {
    fn schema(&self) -> RequestSchema {
        match self.opts.schema {
            Schema::Text => RequestSchema::text_with_id(&self.opts.text_field, &self.opts.id_field),
            Schema::Sheaf => sheaf::schema(),
            Schema::Openai => openai::schema(),
        }
    }

    fn result_bytes_bound(&self, rows: usize, input_bytes: usize) -> usize {
        // Each string in a list takes at least 3 bytes (`"",`).
        self.result_bytes_bound_quoted(rows, input_bytes, input_bytes * 2 / 3)
    }

    fn result_bytes_bound_quoted(&self, rows: usize, input_bytes: usize, quotes: usize) -> usize {
        let vector = 4 * self.folder.dim;
        match self.opts.schema {
            // The id's JSON text (within the input) and a vector.
            Schema::Text => rows * vector + input_bytes,
            // Each text has 2 quotes. The other strings of a valid request
            // are not subtracted: a bad row (skipped, but in the batch's
            // count) may hold none. Strings copied from the input, a
            // generated request id (36), "embedding", "{}" and the dimension.
            Schema::Sheaf => rows * 64 + input_bytes + quotes / 2 * vector,
            Schema::Openai => openai::bound(rows, input_bytes, quotes, self.folder.dim),
        }
    }

    fn output_schema(&self) -> Option<arrow_schema::SchemaRef> {
        Some(match self.opts.schema {
            Schema::Text => text_columns(self.folder.dim),
            Schema::Sheaf => sheaf::columns(self.folder.dim),
            Schema::Openai => openai::columns(),
        })
    }

    fn result_neutral_options(&self) -> &'static [&'static str] {
        // The folder's files are hashed (fingerprint), however its path is
        // spelled; vectors do not depend on the threads (tested).
        &["path", "threads"]
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
        Ok(Arc::new(self.load_model(device)?))
    }
}

impl Embedding {
    /// A backend whose job runs up to `cpu_models` models at once on the
    /// CPU: each gets its share of the cores unless `threads` says.
    fn new(opts: EmbeddingOptions, folder: ModelFolder, cpu_models: usize) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = opts.threads.unwrap_or((cores / cpu_models.max(1)).max(1));
        Embedding {
            opts,
            folder,
            threads,
            cpu_weights: Mutex::new(Weak::new()),
        }
    }

    /// Whether models on `device` run the CPU encoder (f32, exact GELU).
    fn cpu_f32(&self, device: &Device) -> bool {
        *device == Device::Cpu
            && self.opts.dtype == Precision::F32
            && self.folder.bert.hidden_act == HiddenAct::Gelu
    }

    /// The weights on `dev`, through candle.
    fn load_bert(&self, dev: &candle_core::Device) -> Result<Bert, ModelError> {
        let weights = self.folder.dir.join("model.safetensors");
        // SAFETY: the weights file is mapped read-only; it must not change
        // while stook runs (its checksum is in the manifest's fingerprint).
        let vb = unsafe {
            VarBuilder::from_mmaped_safetensors(&[&weights], self.opts.dtype.dtype(), dev)
        }
        .map_err(model_error("model.safetensors"))?;
        Bert::load(vb, &self.folder.bert).map_err(model_error("loading BERT"))
    }

    /// The options' pass sizes, else the defaults for `device`.
    fn micro_batch(&self, device: &Device) -> MicroBatch {
        let default = MicroBatch::for_device(device);
        MicroBatch {
            rows: self.opts.micro_batch.unwrap_or(default.rows),
            tokens: self.opts.micro_batch_tokens.unwrap_or(default.tokens),
        }
    }

    fn load_model(&self, device: &Device) -> Result<EmbeddingModel, ModelError> {
        let dev = candle_device(device).map_err(ModelError::new)?;
        let encoder = if self.cpu_f32(device) {
            let loading = |e| ModelError::new(format!("loading BERT: {e}"));
            // Held while loading, so that actors loading at once load once.
            let mut shared = self.cpu_weights.lock().unwrap_or_else(|p| p.into_inner());
            let weights = match shared.upgrade() {
                Some(w) => w,
                None => {
                    let w = Arc::new(CpuWeights::new(self.load_bert(&dev)?).map_err(loading)?);
                    *shared = Arc::downgrade(&w);
                    w
                }
            };
            Encoder::Cpu(CpuBert::new(weights, self.threads).map_err(loading)?)
        } else {
            let mut bert = self.load_bert(&dev)?;
            let packed = self.opts.attention == Attention::Packed
                && bert.prepare_packed().map_err(model_error("loading BERT"))?;
            if self.opts.attention == Attention::Packed && !packed {
                tracing::info!("no packed kernels for this model (head size, activation or biases): padded passes");
            }
            Encoder::Candle { bert, packed }
        };
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
        let mut model = EmbeddingModel {
            schema: self.opts.schema,
            encoder,
            tokenizer,
            device: dev,
            folder: self.folder.clone(),
            micro: self.micro_batch(device),
        };
        model.check_packed();
        Ok(model)
    }
}
