//! Each stage of the backend timed alone over the same texts, for
//! `stook bench stages`.

use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch, StringArray};
use stook_actors::json_lines::LineEncoder;
use stook_actors::{Device, ModelError};

use super::model::text_columns;
use super::{Embedding, EmbeddingOptions, ModelFolder};
use crate::backends::vectors::vector_column;
use crate::config::ConfigProblem;
use crate::registry::BackendOptions;

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
    pub(super) fn timed<T>(f: impl FnOnce() -> T) -> (T, f64) {
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
