//! The backend registry: backends by name, each built from its own typed
//! options. The built-in backends and a host's own register the same way.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use stook_actors::Backend;

use crate::config::{parse_value_all, ConfigProblem, ModelConfig};

/// A backend's `[model.options]` table, parsed on request into its own
/// type, and what the job tells every backend about how it will run.
#[derive(Clone, Debug)]
pub struct BackendOptions {
    table: toml::Table,
    cpu_models: usize,
    calls: usize,
    batch_timeout: Option<std::time::Duration>,
}

impl Default for BackendOptions {
    fn default() -> Self {
        Self::new(toml::Table::new())
    }
}

impl BackendOptions {
    /// Options from a TOML table.
    pub fn new(table: toml::Table) -> Self {
        BackendOptions {
            table,
            cpu_models: 1,
            calls: 1,
            batch_timeout: None,
        }
    }

    /// Says that up to `n` calls of one model may run at once (the
    /// workers of a `compute = "tasks"` pool share one model), and that a
    /// batch may take `timeout` (`batch.timeout`).
    pub fn with_calls(mut self, n: usize, timeout: Option<std::time::Duration>) -> Self {
        self.calls = n.max(1);
        self.batch_timeout = timeout;
        self
    }

    /// How many calls of one model may run at once (1 unless the job's
    /// actors share one model).
    pub fn concurrent_calls(&self) -> usize {
        self.calls
    }

    /// The job's `batch.timeout`, if it has one.
    pub fn batch_timeout(&self) -> Option<std::time::Duration> {
        self.batch_timeout
    }

    /// Says that `n` models of this backend may compute at once on the CPU
    /// (one per actor with `compute = "actors"`).
    pub fn with_cpu_models(mut self, n: usize) -> Self {
        self.cpu_models = n.max(1);
        self
    }

    /// How many models of this backend may compute at once on the CPU (1
    /// unless the job says more): a backend that runs a model on several
    /// threads shares the cores among them.
    pub fn cpu_models(&self) -> usize {
        self.cpu_models
    }

    /// Deserialises the options; errors name their `model.options.*` key.
    /// Use `#[serde(deny_unknown_fields)]` on `T` so that typos are errors.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, Vec<ConfigProblem>> {
        parse_value_all(toml::Value::Table(self.table.clone()), "model.options")
    }
}

/// Builds a backend from its options.
pub type BackendFactory =
    Arc<dyn Fn(&BackendOptions) -> Result<Arc<dyn Backend>, Vec<ConfigProblem>> + Send + Sync>;

struct Entry {
    summary: String,
    factory: BackendFactory,
}

/// Backends by name.
#[derive(Default)]
pub struct BackendRegistry {
    entries: BTreeMap<String, Entry>,
}

impl BackendRegistry {
    /// A registry with no backends.
    pub fn empty() -> Self {
        Self::default()
    }

    /// A registry with the built-in backends (`echo`, `synthetic`).
    pub fn with_builtins() -> Self {
        let mut r = Self::empty();
        crate::backends::register_builtins(&mut r);
        r
    }

    /// Adds (or replaces) a backend.
    pub fn register(
        &mut self,
        name: &str,
        summary: &str,
        factory: impl Fn(&BackendOptions) -> Result<Arc<dyn Backend>, Vec<ConfigProblem>>
            + Send
            + Sync
            + 'static,
    ) {
        self.entries.insert(
            name.to_string(),
            Entry {
                summary: summary.to_string(),
                factory: Arc::new(factory),
            },
        );
    }

    /// Builds the backend a `[model]` section names.
    pub fn create(&self, model: &ModelConfig) -> Result<Arc<dyn Backend>, Vec<ConfigProblem>> {
        self.create_with(model, 1)
    }

    /// Builds the backend a `[model]` section names, for a job that runs
    /// up to `cpu_models` of its models at once on the CPU.
    pub fn create_with(
        &self,
        model: &ModelConfig,
        cpu_models: usize,
    ) -> Result<Arc<dyn Backend>, Vec<ConfigProblem>> {
        self.create_from(
            model,
            BackendOptions::new(model.options.clone()).with_cpu_models(cpu_models),
        )
    }

    /// Builds the backend a `[model]` section names from `options` (its
    /// `[model.options]` and what the job says of how it will run).
    pub fn create_from(
        &self,
        model: &ModelConfig,
        options: BackendOptions,
    ) -> Result<Arc<dyn Backend>, Vec<ConfigProblem>> {
        let Some(entry) = self.entries.get(&model.backend) else {
            return Err(vec![ConfigProblem::new(
                "model.backend",
                format!(
                    "unknown backend {:?}, expected one of: {}",
                    model.backend,
                    self.names().join(", ")
                ),
            )]);
        };
        (entry.factory)(&options)
    }

    /// Registered names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.entries.keys().cloned().collect()
    }

    /// Name, summary and row schema (with default options) of each backend.
    pub fn describe(&self) -> Vec<(String, String, String)> {
        self.entries
            .iter()
            .map(|(name, e)| {
                let schema = match (e.factory)(&BackendOptions::default()) {
                    Ok(b) => b.schema().describe(),
                    Err(_) => "(depends on its options)".to_string(),
                };
                (name.clone(), e.summary.clone(), schema)
            })
            .collect()
    }
}
