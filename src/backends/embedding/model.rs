//! The loaded model: the encoder it runs (the CPU one in f32, candle's
//! otherwise), tokenizing, cutting a batch into passes and running them.

use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema as Columns, SchemaRef};
use candle_core::{DType, Tensor};
use stook_actors::json_lines::{self, with_meta};
use stook_actors::{Model, ModelError, RequestBatch, ResultWriter};
use tokenizers::{Encoding, Tokenizer};

use super::bert::Bert;
use super::cpu_bert::CpuBert;
use super::{l2_normalize, model_error, MicroBatch, ModelFolder, Pooling, Schema};
use crate::backends::vectors::vector_type;

/// The encoder a model runs: the CPU one in f32, candle's ops otherwise
/// (GPUs, half precision), on packed or padded passes.
pub(super) enum Encoder {
    Cpu(CpuBert),
    Candle { bert: Bert, packed: bool },
}

pub(super) struct EmbeddingModel {
    pub(super) schema: Schema,
    pub(super) encoder: Encoder,
    pub(super) tokenizer: Tokenizer,
    pub(super) device: candle_core::Device,
    pub(super) folder: ModelFolder,
    pub(super) micro: MicroBatch,
}

/// Cuts rows sorted by length into passes of at most `micro.rows` rows and
/// `micro.tokens` tokens: the sum of their lengths if `padded` is false,
/// else rows × the pass's longest (its last row). A row is at least one
/// token; a row longer than the budget gets a pass of its own.
pub(super) fn passes(
    sorted_lens: &[usize],
    micro: MicroBatch,
    padded: bool,
) -> Vec<std::ops::Range<usize>> {
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
    pub(super) fn embed_counting(
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
    pub(super) fn pads(&self) -> bool {
        matches!(self.encoder, Encoder::Candle { packed: false, .. })
    }

    /// Token ids of `texts` (truncated, not padded).
    pub(super) fn tokenize(&self, texts: &[&str]) -> Result<Vec<Encoding>, ModelError> {
        self.tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| ModelError::new(format!("tokenizing: {e}")))
    }

    /// Embeddings of tokenized texts, in order: sorted by length and cut
    /// into passes padded to their own longest.
    pub(super) fn embed_encoded(
        &self,
        encodings: &[Encoding],
    ) -> Result<Vec<Vec<f32>>, ModelError> {
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
    pub(super) fn pass(&self, texts: &[&[u32]]) -> Result<Vec<Vec<f32>>, ModelError> {
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
    pub(super) fn packed_pass(
        &self,
        bert: &Bert,
        texts: &[&[u32]],
    ) -> candle_core::Result<Vec<Vec<f32>>> {
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
    pub(super) fn padded_pass(
        &self,
        bert: &Bert,
        texts: &[&[u32]],
    ) -> candle_core::Result<Vec<Vec<f32>>> {
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
    pub(super) fn check_packed(&mut self) {
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

    pub(super) fn packed_agrees(&self, bert: &Bert) -> Result<(), String> {
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
    pub(super) fn forward(
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
pub(super) fn non_finite(vectors: &[Vec<f32>]) -> Option<(usize, f32)> {
    vectors
        .iter()
        .enumerate()
        .find_map(|(i, v)| v.iter().find(|x| !x.is_finite()).map(|x| (i, *x)))
}

/// The text schema's result columns: the row's id (its JSON text, left
/// out when absent) and its vector.
pub(super) fn text_columns(dim: usize) -> SchemaRef {
    let id = Field::new("id", DataType::Utf8, true);
    Arc::new(Columns::new(vec![
        with_meta(id, json_lines::ENCODING, json_lines::JSON_TEXT),
        Field::new("embedding", vector_type(dim), false),
    ]))
}

#[cfg(test)]
mod tests {
    use super::{passes, MicroBatch};

    pub(super) fn micro(rows: usize, tokens: usize) -> MicroBatch {
        MicroBatch { rows, tokens }
    }

    #[test]
    pub(super) fn padded_passes_count_rows_times_their_longest() {
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
    pub(super) fn packed_passes_count_their_real_tokens() {
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
