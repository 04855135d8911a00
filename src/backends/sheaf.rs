//! sheaf-serve's BatchRunner file format for embeddings, as a drop-in:
//! requests are its `EmbeddingRequest` lines, results its
//! `EmbeddingResponse` columns, written byte for byte as Python's
//! `json.dumps` writes them (`", "` and `": "` separators, non-ASCII as
//! `\uXXXX`, each float the shortest repr of its f64 value: see
//! `stook_actors::json_lines`).
//!
//! Unlike sheaf: a missing `request_id` gets an id derived from the input's
//! content and the row number (a rerun writes the same bytes), and a
//! missing or null `normalize` means true on every row.

use std::sync::Arc;

use arrow_array::{ArrayRef, Int64Array, ListArray, StringArray};
use arrow_buffer::OffsetBuffer;
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use sha2::{Digest, Sha256};
use stook_actors::json_lines::{self, with_meta};
use stook_actors::{FieldKind, FieldSpec, ModelError, RequestSchema};

use super::vectors::{vector_column, vector_type};

/// Columns of the sheaf schema, in [`schema`] order.
pub const TEXTS: usize = 0;
/// `model_name`.
pub const MODEL_NAME: usize = 1;
/// `request_id`.
pub const REQUEST_ID: usize = 3;
/// `normalize`.
pub const NORMALIZE: usize = 4;

/// What each `EmbeddingRequest` line must hold.
pub fn schema() -> RequestSchema {
    let f = FieldSpec::new;
    RequestSchema {
        fields: vec![
            f("texts", FieldKind::StringList, true),
            f("model_name", FieldKind::String, true),
            f("model_type", FieldKind::Literal("embedding"), true),
            f("request_id", FieldKind::String, false),
            f("normalize", FieldKind::Bool, false),
            f(
                "images_b64",
                FieldKind::Refused("image embeddings are not supported; this backend embeds texts"),
                false,
            ),
        ],
        ..RequestSchema::default()
    }
}

/// A request id for a row that has none: a UUID-shaped digest of the
/// input's content key and the 0-based row number.
pub fn request_id(input_key: &str, row: u64) -> String {
    let mut h = Sha256::new();
    h.update(b"stook request_id\0");
    h.update(input_key.as_bytes());
    h.update(row.to_le_bytes());
    let d = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    b[6] = (b[6] & 0x0f) | 0x80; // version 8: custom
    b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// The columns of an `EmbeddingResponse`, in sheaf's key order, each
/// written as Python's `json.dumps` writes it; `metadata` (always `{}`) in
/// JSON Lines only.
pub fn columns(dim: usize) -> SchemaRef {
    let py = |f: Field| with_meta(f, json_lines::STYLE, json_lines::PYTHON);
    let metadata = with_meta(
        Field::new("metadata", DataType::Utf8, false),
        json_lines::ENCODING,
        json_lines::JSON_TEXT,
    );
    let vectors = DataType::List(Arc::new(Field::new("item", vector_type(dim), false)));
    Arc::new(Schema::new(vec![
        py(Field::new("request_id", DataType::Utf8, false)),
        py(Field::new("model_type", DataType::Utf8, false)),
        py(Field::new("model_name", DataType::Utf8, false)),
        py(with_meta(metadata, json_lines::JSONL_ONLY, "true")),
        py(Field::new("embeddings", vectors, false)),
        py(Field::new("dim", DataType::Int64, false)),
    ]))
}

/// The [`columns`] of one response per row: its id, model name and
/// vectors (each `dim` long).
pub fn response_columns(
    ids: Vec<String>,
    names: Vec<&str>,
    vectors: &[Vec<Vec<f32>>],
    dim: usize,
) -> Result<Vec<ArrayRef>, ModelError> {
    let n = ids.len();
    let item = Arc::new(Field::new("item", vector_type(dim), false));
    let offsets = OffsetBuffer::from_lengths(vectors.iter().map(Vec::len));
    let flat = vector_column(vectors.iter().flatten(), dim)?;
    let lists = ListArray::try_new(item, offsets, Arc::new(flat), None)
        .map_err(|e| ModelError::new(format!("internal: {e}")))?;
    Ok(vec![
        Arc::new(StringArray::from(ids)),
        Arc::new(StringArray::from(vec!["embedding"; n])),
        Arc::new(StringArray::from(names)),
        Arc::new(StringArray::from(vec!["{}"; n])),
        Arc::new(lists),
        Arc::new(Int64Array::from(vec![dim as i64; n])),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::RecordBatch;
    use stook_actors::json_lines::LineEncoder;

    #[test]
    fn responses_have_sheafs_keys_and_separators() {
        let vectors = [vec![vec![0.5, -1.0]], vec![]];
        let cols = response_columns(vec!["r1".into(), "é".into()], vec!["m", "m"], &vectors, 2);
        let batch = RecordBatch::try_new(columns(2), cols.unwrap()).unwrap();
        let mut text = String::new();
        LineEncoder::new(&columns(2), false).write_batch(&batch, &mut text);
        assert_eq!(
            text,
            "{\"request_id\": \"r1\", \"model_type\": \"embedding\", \"model_name\": \"m\", \"metadata\": {}, \"embeddings\": [[0.5, -1.0]], \"dim\": 2}\n\
             {\"request_id\": \"\\u00e9\", \"model_type\": \"embedding\", \"model_name\": \"m\", \"metadata\": {}, \"embeddings\": [], \"dim\": 2}\n"
        );
        let a = request_id("k", 7);
        assert_eq!(a, request_id("k", 7));
        assert_ne!(a, request_id("k", 8));
        assert_ne!(a, request_id("j", 7));
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "8");
    }
}
