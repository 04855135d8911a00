//! `backend = "sheaf"`: one of sheaf-serve's `ModelBackend`s (a built-in
//! or the user's own, registered with `@register_backend`) in Python
//! workers, as a drop-in for sheaf-serve's `BatchRunner`: input lines are
//! sheaf requests, output lines its responses as BatchRunner writes them
//! (`json.dumps(response.model_dump(mode="json"))`).
//!
//! Each worker runs `imports` (which register the user's backends), then
//! sheaf-serve's own registration, builds the backend from `spec` through
//! the registry, calls `load()` once and `batch_predict()` on each batch
//! of requests validated against sheaf's pydantic models. A line that is
//! not JSON, has the wrong `model_type` or no `model_name` is refused
//! before the model loads, naming its line; one that sheaf's models refuse
//! fails its batch, which is narrowed to the line (named in the error, or
//! in `_errors.jsonl` with `on_error = "skip"`). A request without
//! `request_id` gets one derived from the input's content and its row (as
//! the `embedding` backend's sheaf schema does), so a rerun writes the
//! same bytes.

use std::sync::{Arc, Mutex};

use serde::Deserialize;
use serde_json::json;
use stook_actors::{Backend, FieldKind, FieldSpec, RequestSchema};

use super::{
    default_per_byte, default_python, describe, names_a_file, problem, PythonBackend, Room,
};
use crate::config::ConfigProblem;
use crate::registry::BackendOptions;

/// `[model.options]` of `sheaf`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SheafOptions {
    /// The interpreter (sheaf-serve installed in its environment).
    #[serde(default = "default_python")]
    pub python: String,
    /// Modules (or `.py` files, relative to the config file) that register
    /// the user's own backends, run in each worker before the lookup.
    #[serde(default)]
    pub imports: Vec<String>,
    /// What BatchSpec says of the model.
    pub spec: SheafSpec,
    /// Room reserved in the store for a batch's responses: this many
    /// bytes per request …
    #[serde(default = "default_response_bytes")]
    pub result_bytes_per_row: usize,
    /// … plus this many per byte of the batch's requests.
    #[serde(default = "default_per_byte")]
    pub result_bytes_per_input_byte: usize,
}

/// BatchSpec's model fields.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SheafSpec {
    /// The deployment's name.
    pub name: String,
    /// The requests' `model_type` (`embedding`, `time_series`, …).
    pub model_type: String,
    /// The registered backend's name.
    pub backend: String,
    /// Passed to the backend's constructor.
    #[serde(default)]
    pub backend_kwargs: toml::Table,
}

fn default_response_bytes() -> usize {
    64 << 10
}

/// Builds `sheaf`: starts the interpreter once to run the imports and
/// check that the registry knows the backend.
pub fn create(options: &BackendOptions) -> Result<Arc<dyn Backend>, Vec<ConfigProblem>> {
    let o: SheafOptions = options.parse()?;
    let kwargs = serde_json::to_value(&o.spec.backend_kwargs)
        .map_err(|e| problem("spec.backend_kwargs", e.to_string()))?;
    let spec = json!({
        "name": o.spec.name,
        "model_type": o.spec.model_type,
        "backend": o.spec.backend,
        "backend_kwargs": kwargs,
    });
    let (_, spare) = describe(
        &o.python,
        &json!({"op": "describe_sheaf", "imports": o.imports, "spec": spec}),
        "spec",
    )?;
    let f = FieldSpec::new;
    // What every line is checked for before the model loads.
    let model_type: &'static str = Box::leak(o.spec.model_type.clone().into_boxed_str());
    let requests = RequestSchema {
        fields: vec![
            f("model_type", FieldKind::Literal(model_type), true),
            f("model_name", FieldKind::String, true),
            f("request_id", FieldKind::String, false),
        ],
        keep_raw: true,
        ..RequestSchema::default()
    };
    Ok(Arc::new(PythonBackend {
        load: json!({"op": "load_sheaf", "imports": o.imports, "spec": spec}),
        requests,
        schema: None,
        schema_text: None,
        room: Room {
            result_bytes_per_row: o.result_bytes_per_row,
            result_bytes_per_input_byte: o.result_bytes_per_input_byte,
        },
        files: o
            .imports
            .iter()
            .filter(|m| names_a_file(m))
            .cloned()
            .collect(),
        python: o.python,
        timeout: options.batch_timeout(),
        calls: options.concurrent_calls(),
        spare: Mutex::new(Some(spare)),
    }))
}
