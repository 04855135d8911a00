//! `echo`: each result is the request row itself: a JSON Lines row byte for
//! byte, a table's row as its typed columns (a Parquet or Arrow table
//! through `echo` to Parquet or Arrow output is the same table).

use std::sync::Arc;

use arrow_schema::SchemaRef;
use serde::Deserialize;
use stook_actors::{Backend, Device, Model, ModelError, RequestBatch, RequestSchema, ResultWriter};

use crate::config::ConfigProblem;
use crate::registry::BackendOptions;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EchoOptions {}

/// The echo backend (it takes no options).
pub struct Echo;

/// Builds `echo` from its (empty) options.
pub fn create(options: &BackendOptions) -> Result<Arc<dyn Backend>, Vec<ConfigProblem>> {
    options.parse::<EchoOptions>()?;
    Ok(Arc::new(Echo))
}

impl Backend for Echo {
    fn schema(&self) -> RequestSchema {
        RequestSchema {
            fields: Vec::new(),
            keep_raw: true,
            ..RequestSchema::default()
        }
    }

    fn result_bytes_bound(&self, _rows: usize, input_bytes: usize) -> usize {
        input_bytes
    }

    fn output_schema_for(&self, rows: Option<&SchemaRef>) -> Option<SchemaRef> {
        rows.cloned()
    }

    fn load(&self, _device: &Device) -> Result<Arc<dyn Model>, ModelError> {
        Ok(Arc::new(Echo))
    }
}

impl Model for Echo {
    fn predict(&self, batch: &RequestBatch, out: &mut ResultWriter) -> Result<(), ModelError> {
        if let Some(row) = batch.raw_columns() {
            return out.append(batch.rows(), row.columns().to_vec());
        }
        for i in 0..batch.len() {
            let raw = batch
                .raw(i)
                .ok_or_else(|| ModelError::new("internal: row text missing"))?;
            out.push(batch.row(i), raw);
        }
        Ok(())
    }
}
