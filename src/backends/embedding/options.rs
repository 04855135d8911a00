//! `[model.options]` of `embedding`: the keys, their defaults, and how a
//! model cuts its texts into passes.

use std::path::PathBuf;

use candle_core::DType;
use serde::Deserialize;
use stook_actors::Device;

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
    pub(super) fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::F16 => DType::F16,
            Precision::Bf16 => DType::BF16,
        }
    }
}

pub(super) fn default_text() -> String {
    "text".into()
}
pub(super) fn default_id() -> String {
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
