//! Vectors as Arrow columns, for every backend that returns embeddings.

use std::sync::Arc;

use arrow_array::{FixedSizeListArray, Float32Array};
use arrow_schema::{DataType, Field};
use stook_actors::ModelError;

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
