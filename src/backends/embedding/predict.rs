//! A batch's answers in each request schema: text rows, sheaf-serve's
//! requests and OpenAI Batch lines.

use std::sync::Arc;

use stook_actors::{ModelError, RequestBatch, ResultWriter};

use super::l2_normalize;
use super::model::{non_finite, EmbeddingModel};
use crate::backends::vectors::vector_column;
use crate::backends::{openai, sheaf};

impl EmbeddingModel {
    pub(super) fn predict_text(
        &self,
        batch: &RequestBatch,
        out: &mut ResultWriter,
    ) -> Result<(), ModelError> {
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
    pub(super) fn predict_sheaf(
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
    pub(super) fn predict_openai(
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
