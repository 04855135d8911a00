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
use std::sync::{Arc, Mutex, Weak};

use arrow_array::{ArrayRef, FixedSizeListArray, Float32Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema as Columns, SchemaRef};
use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{Config as BertConfig, HiddenAct};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use stook_actors::json_lines::{self, with_meta, LineEncoder};
use stook_actors::{Backend, Device, Model, ModelError, RequestBatch, RequestSchema, ResultWriter};
use tokenizers::{Encoding, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use super::bert::Bert;
use super::cpu_bert::{CpuBert, CpuWeights};
use super::{openai, sheaf};
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
    /// length. Default: [`MicroBatch::for_device`].
    #[serde(default)]
    pub micro_batch: Option<usize>,
    /// The most tokens in one forward pass: short texts go many to a pass,
    /// long ones few. A pass's tokens are its real ones where texts are
    /// packed end to end, rows × its longest on padded passes. Default:
    /// [`MicroBatch::for_device`].
    #[serde(default)]
    pub micro_batch_tokens: Option<usize>,
    /// The weights' float type on the device: `f32` (default), or `f16` /
    /// `bf16` (GPUs; vectors are pooled and written as f32 either way).
    #[serde(default)]
    pub dtype: Precision,
    /// The request and response shapes: `text`, `sheaf` or `openai`.
    #[serde(default)]
    pub schema: Schema,
    /// CPU threads per model; by default the cores divided among the
    /// models the job runs at once (one per actor).
    #[serde(default)]
    pub threads: Option<usize>,
    /// How candle's encoder (GPUs, half precision) runs attention.
    #[serde(default)]
    pub attention: Attention,
}

/// `[model.options] attention`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Attention {
    /// A pass's texts end to end, no padding: candle's matrix products
    /// and stook's own attention, epilogue and pooling ops (head sizes 32
    /// and 64 with exact GELU; other models run `padded`).
    #[default]
    Packed,
    /// Passes padded to their longest text, attention as candle's
    /// batched matrix products with a mask.
    Padded,
}

/// `[model.options] schema`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schema {
    /// `{"id": …, "text": "…"}` → `{"id": …, "embedding": […]}`.
    #[default]
    Text,
    /// sheaf-serve's EmbeddingRequest → EmbeddingResponse lines.
    Sheaf,
    /// The OpenAI Batch API's request → output lines (`/v1/embeddings`).
    Openai,
}

/// `[model.options] dtype`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// 32-bit floats.
    #[default]
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    Bf16,
}

impl Precision {
    fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::F16 => DType::F16,
            Precision::Bf16 => DType::BF16,
        }
    }
}

fn default_text() -> String {
    "text".into()
}
fn default_id() -> String {
    "id".into()
}
/// How a model cuts its texts into forward passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MicroBatch {
    /// Rows per pass at most.
    pub rows: usize,
    /// Tokens per pass at most.
    pub tokens: usize,
}

impl MicroBatch {
    /// The defaults for each kind of device, the settings the README's
    /// figures were measured with: on the CPU 64 rows and 4,096 tokens;
    /// on a GPU, which small passes leave idle between kernel launches,
    /// 512 rows and 65,536 tokens.
    pub fn for_device(device: &Device) -> Self {
        match device {
            Device::Cpu => MicroBatch {
                rows: 64,
                tokens: 4096,
            },
            Device::Cuda(_) => MicroBatch {
                rows: 512,
                tokens: 65_536,
            },
        }
    }
}

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
pub(crate) fn candle_device(device: &Device) -> Result<candle_core::Device, String> {
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

/// The encoder a model runs: the CPU one in f32, candle's ops otherwise
/// (GPUs, half precision), on packed or padded passes.
enum Encoder {
    Cpu(CpuBert),
    Candle { bert: Bert, packed: bool },
}

struct EmbeddingModel {
    schema: Schema,
    encoder: Encoder,
    tokenizer: Tokenizer,
    device: candle_core::Device,
    folder: ModelFolder,
    micro: MicroBatch,
}

/// Cuts rows sorted by length into passes of at most `micro.rows` rows and
/// `micro.tokens` tokens: the sum of their lengths if `padded` is false,
/// else rows × the pass's longest (its last row). A row is at least one
/// token; a row longer than the budget gets a pass of its own.
fn passes(sorted_lens: &[usize], micro: MicroBatch, padded: bool) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut sum) = (0, 0);
    for (i, &len) in sorted_lens.iter().enumerate() {
        let (len, rows) = (len.max(1), i + 1 - start);
        sum += len;
        let tokens = if padded { rows * len } else { sum };
        if rows > 1 && (rows > micro.rows || tokens > micro.tokens) {
            out.push(start..i);
            (start, sum) = (i, len);
        }
    }
    if start < sorted_lens.len() {
        out.push(start..sorted_lens.len());
    }
    out
}

impl EmbeddingModel {
    /// Embeddings of `texts`, in order, counting in `out` those longer
    /// than max_seq_length (`texts_truncated` in the run report).
    ///
    /// Two stages: a tokenizer thread tokenizes groups of texts of similar
    /// size (sorted by bytes, cut into passes by an estimate of their
    /// tokens) and hands them over a bounded channel to this thread, which
    /// runs the model on one group while the next is tokenized.
    fn embed_counting(
        &self,
        texts: &[&str],
        out: &mut ResultWriter,
    ) -> Result<(Vec<Vec<f32>>, Vec<usize>), ModelError> {
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| texts[i].len());
        let estimate: Vec<usize> = order.iter().map(|&i| texts[i].len() / 4 + 2).collect();
        let groups = passes(&estimate, self.micro, self.pads());
        let order = &order;
        let mut vectors = vec![Vec::new(); texts.len()];
        let mut tokens = vec![0; texts.len()];
        let mut cut = 0;
        std::thread::scope(|scope| {
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            std::thread::Builder::new()
                .name("stook-tokenizer".into())
                .spawn_scoped(scope, move || {
                    for g in groups {
                        let group: Vec<&str> = order[g.clone()].iter().map(|&i| texts[i]).collect();
                        if tx.send((g, self.tokenize(&group))).is_err() {
                            break;
                        }
                    }
                })
                .map_err(|e| ModelError::new(format!("starting the tokenizer thread: {e}")))?;
            for (g, encodings) in rx {
                let encodings = encodings?;
                cut += encodings
                    .iter()
                    .filter(|e| !e.get_overflowing().is_empty())
                    .count();
                for (&i, e) in order[g.clone()].iter().zip(&encodings) {
                    tokens[i] = e.get_ids().len();
                }
                for (&i, v) in order[g].iter().zip(self.embed_encoded(&encodings)?) {
                    vectors[i] = v;
                }
            }
            Ok::<_, ModelError>(())
        })?;
        out.count("texts_truncated", cut as u64);
        Ok((vectors, tokens))
    }

    /// Whether passes are padded to their longest text (candle's padded
    /// encoder) rather than packed end to end (the CPU and packed ones).
    fn pads(&self) -> bool {
        matches!(self.encoder, Encoder::Candle { packed: false, .. })
    }

    /// Token ids of `texts` (truncated, not padded).
    fn tokenize(&self, texts: &[&str]) -> Result<Vec<Encoding>, ModelError> {
        self.tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| ModelError::new(format!("tokenizing: {e}")))
    }

    /// Embeddings of tokenized texts, in order: sorted by length and cut
    /// into passes padded to their own longest.
    fn embed_encoded(&self, encodings: &[Encoding]) -> Result<Vec<Vec<f32>>, ModelError> {
        let mut order: Vec<usize> = (0..encodings.len()).collect();
        order.sort_by_key(|&i| encodings[i].get_ids().len());
        let mut out = vec![Vec::new(); encodings.len()];
        let lens: Vec<usize> = order
            .iter()
            .map(|&i| encodings[i].get_ids().len())
            .collect();
        for range in passes(&lens, self.micro, self.pads()) {
            let chunk = &order[range];
            let texts: Vec<&[u32]> = chunk.iter().map(|&i| encodings[i].get_ids()).collect();
            for (&i, v) in chunk.iter().zip(self.pass(&texts)?) {
                out[i] = v;
            }
        }
        Ok(out)
    }

    /// Pooled (and normalised) vectors of one pass's texts (token ids).
    fn pass(&self, texts: &[&[u32]]) -> Result<Vec<Vec<f32>>, ModelError> {
        match &self.encoder {
            Encoder::Cpu(cpu) => cpu
                .embed(texts, self.folder.pooling, self.folder.normalize)
                .map_err(|e| ModelError::new(format!("forward: {e}"))),
            Encoder::Candle { bert, packed: true } => self
                .packed_pass(bert, texts)
                .map_err(model_error("forward")),
            Encoder::Candle { bert, .. } => self
                .padded_pass(bert, texts)
                .map_err(model_error("forward")),
        }
    }

    /// A pass with the texts end to end (no padding).
    fn packed_pass(&self, bert: &Bert, texts: &[&[u32]]) -> candle_core::Result<Vec<Vec<f32>>> {
        let mut ids = Vec::new();
        let mut starts = vec![0u32];
        for t in texts {
            ids.extend_from_slice(t);
            starts.push(ids.len() as u32);
        }
        let cls = self.folder.pooling == Pooling::Cls;
        let mut pooled = bert.forward_packed(&ids, &starts, cls)?.to_vec2::<f32>()?;
        if self.folder.normalize {
            pooled.iter_mut().for_each(|v| l2_normalize(v));
        }
        Ok(pooled)
    }

    /// A pass padded to its longest text.
    fn padded_pass(&self, bert: &Bert, texts: &[&[u32]]) -> candle_core::Result<Vec<Vec<f32>>> {
        let len = texts.iter().map(|t| t.len()).max().unwrap_or(1).max(1);
        let mut ids = vec![0u32; texts.len() * len];
        for (r, t) in texts.iter().enumerate() {
            ids[r * len..r * len + t.len()].copy_from_slice(t);
        }
        let lens: Vec<usize> = texts.iter().map(|t| t.len()).collect();
        self.forward(bert, &ids, &lens, len)
    }

    /// Checks packed passes against padded ones (candle's own ops) on a
    /// few texts, once per model: their kernels are stook's. On a failure
    /// or a disagreement it says why and runs padded passes from then on.
    fn check_packed(&mut self) {
        let Encoder::Candle { bert, packed: true } = &self.encoder else {
            return;
        };
        if let Err(why) = self.packed_agrees(bert) {
            tracing::warn!("packed passes {why}: running padded passes instead");
            if let Encoder::Candle { packed, .. } = &mut self.encoder {
                *packed = false;
            }
        }
    }

    fn packed_agrees(&self, bert: &Bert) -> Result<(), String> {
        const PROBE: [&str; 3] = [
            "stook checks its kernels.",
            "",
            "A longer text, so that attention goes through more than one tile of keys and \
             values: the quick brown fox jumps over the lazy dog, twice; the quick brown fox \
             jumps over the lazy dog again, and then once more for good measure.",
        ];
        let encodings = self.tokenize(&PROBE).map_err(|e| e.to_string())?;
        let texts: Vec<&[u32]> = encodings.iter().map(|e| e.get_ids()).collect();
        let packed = self
            .packed_pass(bert, &texts)
            .map_err(|e| format!("failed ({e})"))?;
        let padded = self
            .padded_pass(bert, &texts)
            .map_err(|e| format!("could not be checked ({e})"))?;
        for (i, (a, b)) in packed.iter().zip(&padded).enumerate() {
            let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
            let norms = a.iter().map(|x| x * x).sum::<f32>().sqrt()
                * b.iter().map(|x| x * x).sum::<f32>().sqrt();
            let cosine = dot / norms;
            if cosine.is_nan() || cosine < 0.999 {
                return Err(format!(
                    "disagree with padded ones on a check text (cosine {cosine} on text {i})"
                ));
            }
        }
        Ok(())
    }

    /// Pooled (and normalised) vectors of one padded pass through candle.
    fn forward(
        &self,
        bert: &Bert,
        ids: &[u32],
        lens: &[usize],
        len: usize,
    ) -> candle_core::Result<Vec<Vec<f32>>> {
        let n = lens.len();
        // Pooling sums over tokens: in f32 whatever the model's dtype.
        let hidden = bert.forward(ids, lens, len)?.to_dtype(DType::F32)?; // (n, len, dim)
        let mut mask = vec![0f32; n * len];
        for (r, &l) in lens.iter().enumerate() {
            mask[r * len..r * len + l].fill(1.0);
        }
        let mask = Tensor::from_vec(mask, (n, len), &self.device)?;
        let pooled = match self.folder.pooling {
            Pooling::Mean => {
                let m = mask.unsqueeze(2)?; // (n, len, 1)
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
        match self.schema {
            Schema::Text => self.predict_text(batch, out),
            Schema::Sheaf => self.predict_sheaf(batch, out),
            Schema::Openai => self.predict_openai(batch, out),
        }
    }
}

/// The first non-finite value in `vectors`, by index.
fn non_finite(vectors: &[Vec<f32>]) -> Option<(usize, f32)> {
    vectors
        .iter()
        .enumerate()
        .find_map(|(i, v)| v.iter().find(|x| !x.is_finite()).map(|x| (i, *x)))
}

/// The text schema's result columns: the row's id (its JSON text, left
/// out when absent) and its vector.
fn text_columns(dim: usize) -> SchemaRef {
    let id = Field::new("id", DataType::Utf8, true);
    Arc::new(Columns::new(vec![
        with_meta(id, json_lines::ENCODING, json_lines::JSON_TEXT),
        Field::new("embedding", vector_type(dim), false),
    ]))
}

/// A vector of `dim` f32s, as a column type.
pub(crate) fn vector_type(dim: usize) -> DataType {
    DataType::FixedSizeList(
        Arc::new(Field::new("item", DataType::Float32, false)),
        dim as i32,
    )
}

/// `vectors` (each `dim` long) as one column of [`vector_type`].
pub(crate) fn vector_column<'a>(
    vectors: impl IntoIterator<Item = &'a Vec<f32>>,
    dim: usize,
) -> Result<FixedSizeListArray, ModelError> {
    let vectors = vectors.into_iter();
    let mut flat = Vec::with_capacity(vectors.size_hint().0 * dim);
    for v in vectors {
        flat.extend_from_slice(v);
    }
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    FixedSizeListArray::try_new(item, dim as i32, Arc::new(Float32Array::from(flat)), None)
        .map_err(|e| ModelError::new(format!("internal: vectors of {dim} values: {e}")))
}

/// Seconds each stage of the backend took over the same texts, alone.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StageTimes {
    /// Texts.
    pub texts: usize,
    /// Loading the model.
    pub load: f64,
    /// Tokenizing every text.
    pub tokenize: f64,
    /// The model alone on the tokenized texts: padding, forward passes,
    /// pooling, normalisation, vectors back to the host.
    pub forward: f64,
    /// Writing every vector as a JSON Lines result, as the Sink does.
    pub format: f64,
}

/// Times the backend's stages one after another over `texts`, in batches of
/// `batch` texts, on `device`: what the model's forward alone reaches, and
/// the tokenizer's and the writer's shares.
pub fn stage_times(
    options: &BackendOptions,
    device: &Device,
    texts: &[String],
    batch: usize,
) -> Result<StageTimes, ModelError> {
    let said = |p: &ConfigProblem| format!("{}: {}", p.key, p.message);
    let opts: EmbeddingOptions = options
        .parse()
        .map_err(|ps| ModelError::new(ps.iter().map(said).collect::<Vec<_>>().join("; ")))?;
    let folder = ModelFolder::read(&opts.path, &opts).map_err(|p| ModelError::new(said(&p)))?;
    fn timed<T>(f: impl FnOnce() -> T) -> (T, f64) {
        let t = std::time::Instant::now();
        let r = f();
        (r, t.elapsed().as_secs_f64())
    }
    let (model, load) = timed(|| Embedding::new(opts, folder, 1).load_model(device));
    let model = model?;
    let chunks: Vec<Vec<&str>> = texts
        .chunks(batch.max(1))
        .map(|c| c.iter().map(String::as_str).collect())
        .collect();
    let (encoded, tokenize) = timed(|| {
        chunks
            .iter()
            .map(|c| model.tokenize(c))
            .collect::<Result<Vec<_>, _>>()
    });
    let encoded = encoded?;
    let (vectors, forward) = timed(|| {
        encoded
            .iter()
            .map(|e| model.embed_encoded(e))
            .collect::<Result<Vec<_>, _>>()
    });
    let vectors = vectors?;
    let dim = model.folder.dim;
    let columns = text_columns(dim);
    let (bytes, format) = timed(|| -> Result<usize, ModelError> {
        let encoder = LineEncoder::new(&columns, false);
        let mut text = String::new();
        for vs in &vectors {
            let ids: Vec<String> = (0..vs.len()).map(|i| i.to_string()).collect();
            let cols: Vec<ArrayRef> = vec![
                Arc::new(StringArray::from(ids)),
                Arc::new(vector_column(vs, dim)?),
            ];
            let batch = RecordBatch::try_new(columns.clone(), cols)
                .map_err(|e| ModelError::new(format!("internal: {e}")))?;
            text.clear();
            encoder.write_batch(&batch, &mut text);
        }
        Ok(text.len())
    });
    std::hint::black_box(bytes?);
    Ok(StageTimes {
        texts: texts.len(),
        load,
        tokenize,
        forward,
        format,
    })
}

impl EmbeddingModel {
    fn predict_text(&self, batch: &RequestBatch, out: &mut ResultWriter) -> Result<(), ModelError> {
        let texts: Vec<&str> = (0..batch.len())
            .map(|i| batch.field(0, i).unwrap_or_default())
            .collect();
        let (vectors, _) = self.embed_counting(&texts, out)?;
        if let Some((i, bad)) = non_finite(&vectors) {
            return Err(ModelError::for_row(
                batch.row(i),
                format!("the model produced {bad}"),
            ));
        }
        let embedding = vector_column(&vectors, self.folder.dim)?;
        out.append(
            batch.rows(),
            vec![Arc::new(batch.field_array(1).clone()), Arc::new(embedding)],
        )
    }

    /// sheaf-serve's EmbeddingRequest lines: every text of every row in
    /// one sorted run through the model, then one response per row.
    fn predict_sheaf(
        &self,
        batch: &RequestBatch,
        out: &mut ResultWriter,
    ) -> Result<(), ModelError> {
        let mut lists = Vec::with_capacity(batch.len());
        for i in 0..batch.len() {
            let raw = batch.field(sheaf::TEXTS, i).unwrap_or("[]");
            let texts: Vec<String> = serde_json::from_str(raw)
                .map_err(|e| ModelError::for_row(batch.row(i), format!("field \"texts\": {e}")))?;
            lists.push(texts);
        }
        let flat: Vec<&str> = lists.iter().flatten().map(String::as_str).collect();
        let (vectors, _) = self.embed_counting(&flat, out)?;
        let mut rows_vectors = Vec::with_capacity(batch.len());
        let mut it = vectors.into_iter();
        for (i, texts) in lists.iter().enumerate() {
            let mut vs: Vec<Vec<f32>> = it.by_ref().take(texts.len()).collect();
            if let Some((_, bad)) = non_finite(&vs) {
                return Err(ModelError::for_row(
                    batch.row(i),
                    format!("the model produced {bad}"),
                ));
            }
            // sentence-transformers' normalize_embeddings: L2 after the
            // model's own modules (a no-op when they normalise already).
            let normalize = batch.field(sheaf::NORMALIZE, i) != Some("false");
            if normalize && !self.folder.normalize {
                for v in &mut vs {
                    l2_normalize(v);
                }
            }
            rows_vectors.push(vs);
        }
        let ids: Vec<String> = (0..batch.len())
            .map(|i| match batch.field(sheaf::REQUEST_ID, i) {
                Some(id) => id.to_string(),
                None => sheaf::request_id(batch.input_key(), batch.row(i)),
            })
            .collect();
        let names = (0..batch.len()).map(|i| batch.field(sheaf::MODEL_NAME, i).unwrap_or_default());
        let columns =
            sheaf::response_columns(ids, names.collect(), &rows_vectors, self.folder.dim)?;
        out.append(batch.rows(), columns)
    }

    /// OpenAI Batch lines: every text of every request in one sorted run
    /// through the model, then one output line per row, a refused or
    /// unreadable one too.
    fn predict_openai(
        &self,
        batch: &RequestBatch,
        out: &mut ResultWriter,
    ) -> Result<(), ModelError> {
        let dim = self.folder.dim;
        let requests: Vec<_> = (0..batch.len())
            .map(|i| {
                batch
                    .problem(i)
                    .is_none()
                    .then(|| openai::request(batch, i, dim))
            })
            .collect();
        let flat: Vec<&str> = requests
            .iter()
            .flatten()
            .flatten()
            .flat_map(|r| r.texts.iter().map(String::as_str))
            .collect();
        let (vectors, tokens) = if flat.is_empty() {
            Default::default()
        } else {
            self.embed_counting(&flat, out)?
        };
        let mut lines = openai::Lines::default();
        let mut at = 0;
        for (i, request) in requests.iter().enumerate() {
            match request {
                None => lines.unreadable(batch, i, batch.problem(i).unwrap_or_default()),
                Some(Err(why)) => lines.refuse(batch, i, why),
                Some(Ok(req)) => {
                    let span = at..at + req.texts.len();
                    at = span.end;
                    let vs = &vectors[span.clone()];
                    match non_finite(vs) {
                        Some((_, bad)) => lines.fail(batch, i, format!("the model produced {bad}")),
                        None => lines.answer(batch, i, req, vs, tokens[span].iter().sum()),
                    }
                }
            }
        }
        out.count("error_lines", lines.failed);
        out.append(batch.rows(), lines.finish())
    }
}

#[cfg(test)]
mod tests {
    use super::{passes, MicroBatch};

    fn micro(rows: usize, tokens: usize) -> MicroBatch {
        MicroBatch { rows, tokens }
    }

    #[test]
    fn padded_passes_count_rows_times_their_longest() {
        let lens = [5, 5, 6, 8, 10, 12, 100, 256];
        let p = passes(&lens, micro(64, 48), true);
        assert_eq!(p, vec![0..4, 4..6, 6..7, 7..8]);
        assert_eq!(
            passes(&lens, micro(2, 1 << 20), true),
            vec![0..2, 2..4, 4..6, 6..8]
        );
        assert!(passes(&[], micro(4, 4), true).is_empty());
    }

    #[test]
    fn packed_passes_count_their_real_tokens() {
        let lens = [5, 5, 6, 8, 10, 12, 100, 256];
        // 5+5+6+8+10+12 = 46 ≤ 48 (padded passes stop at 4 rows: 5 × 10 > 48).
        let p = passes(&lens, micro(64, 48), false);
        assert_eq!(p, vec![0..6, 6..7, 7..8]);
        assert_eq!(passes(&lens, micro(64, 1 << 20), false), vec![0..8]);
        assert_eq!(
            passes(&lens, micro(3, 1 << 20), false),
            vec![0..3, 3..6, 6..8]
        );
        // Empty texts still count one token each.
        assert_eq!(passes(&[0, 0, 0], micro(64, 2), false), vec![0..2, 2..3]);
        assert!(passes(&[], micro(4, 4), false).is_empty());
    }
}
