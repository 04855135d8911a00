//! `backend = "python"`: a Python class, as Ray Data's `map_batches` takes
//! it (see the module above for how it runs).

use std::sync::{Arc, Mutex};

use serde::Deserialize;
use serde_json::{json, Value};
use stook_actors::{Backend, RequestSchema};

use super::{
    default_per_byte, default_per_row, default_python, describe, names_a_file, problem,
    PythonBackend, Room,
};
use crate::config::ConfigProblem;
use crate::registry::BackendOptions;

/// `[model.options]` of `python`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PythonOptions {
    /// The interpreter: a path (relative to the config file) or a name
    /// looked up on `PATH`.
    #[serde(default = "default_python")]
    pub python: String,
    /// A `.py` file (relative to the config file) or an importable module.
    pub module: String,
    /// The class in it: `__init__(self, **kwargs)`, `__call__(self, batch)`.
    pub class: String,
    /// Passed to `__init__`.
    #[serde(default)]
    pub kwargs: toml::Table,
    /// What `__call__` gets: `pyarrow` (a Table), `numpy` (a dict of
    /// arrays) or `pandas` (a DataFrame).
    #[serde(default)]
    pub batch_format: BatchFormat,
    /// Room reserved in the store for a batch's results: this many bytes
    /// per row …
    #[serde(default = "default_per_row")]
    pub result_bytes_per_row: usize,
    /// … plus this many per byte of the batch's input.
    #[serde(default = "default_per_byte")]
    pub result_bytes_per_input_byte: usize,
}

/// The batch type the class is called with, as Ray Data names them.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BatchFormat {
    /// A `pyarrow.Table`.
    #[default]
    Pyarrow,
    /// A dict of column name → `numpy.ndarray`.
    Numpy,
    /// A `pandas.DataFrame`.
    Pandas,
}

impl BatchFormat {
    fn name(self) -> &'static str {
        match self {
            BatchFormat::Pyarrow => "pyarrow",
            BatchFormat::Numpy => "numpy",
            BatchFormat::Pandas => "pandas",
        }
    }
}

/// Builds `python`: starts the interpreter once to import the module and
/// read the class's `output_schema` (the results' columns must be known
/// before the run).
pub fn create(options: &BackendOptions) -> Result<Arc<dyn Backend>, Vec<ConfigProblem>> {
    let o: PythonOptions = options.parse()?;
    let msg = json!({"op": "describe", "module": o.module, "class": o.class});
    let (reply, spare) = describe(&o.python, &msg, "module").map_err(|mut p| {
        for problem in &mut p {
            if problem.key == "model.options.module" {
                problem.message = format!(
                    "cannot load class {:?} from {:?}: {}",
                    o.class, o.module, problem.message
                );
            }
        }
        p
    })?;
    let schema_text = reply
        .get("schema")
        .and_then(Value::as_str)
        .map(str::to_string);
    let schema = match &schema_text {
        Some(t) => Some(super::decode_schema(t).map_err(|m| problem("class", m))?),
        None => None,
    };
    let kwargs = serde_json::to_value(&o.kwargs).map_err(|e| problem("kwargs", e.to_string()))?;
    Ok(Arc::new(PythonBackend {
        load: json!({
            "op": "load",
            "module": o.module,
            "class": o.class,
            "kwargs": kwargs,
            "batch_format": o.batch_format.name(),
        }),
        requests: RequestSchema {
            fields: Vec::new(),
            keep_raw: true,
            ..RequestSchema::default()
        },
        schema,
        schema_text,
        room: Room {
            result_bytes_per_row: o.result_bytes_per_row,
            result_bytes_per_input_byte: o.result_bytes_per_input_byte,
        },
        files: if names_a_file(&o.module) {
            vec![o.module.clone()]
        } else {
            Vec::new()
        },
        python: o.python,
        timeout: options.batch_timeout(),
        calls: options.concurrent_calls(),
        spare: Mutex::new(Some(spare)),
    }))
}
