//! `synthetic`: a stand-in for a real model. Its result is a pure function
//! of the row (the id and a digest of the text, padded to `output_bytes`),
//! so tests can check every row; its costs and failures are configurable.
//!
//! Rows: a JSON object with a string `text` and an optional `id` of any
//! type (both names configurable). Result:
//! `{"id":<id>,"digest":"<16 hex digits>","pad":"xxx…"}`, `id` omitted when
//! the row has none, `pad` present when needed to reach `output_bytes`.

use std::collections::HashSet;
use std::fmt::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use stook_actors::{Backend, Device, Model, ModelError, RequestBatch, RequestSchema, ResultWriter};

use crate::config::ConfigProblem;
use crate::registry::BackendOptions;

/// `[model.options]` of `synthetic`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyntheticOptions {
    /// Model load time.
    #[serde(default)]
    pub load_ms: u64,
    /// Cost of each batch.
    #[serde(default)]
    pub batch_ms: u64,
    /// Cost of each row.
    #[serde(default)]
    pub row_us: u64,
    /// Burn CPU for the costs instead of sleeping.
    #[serde(default)]
    pub busy: bool,
    /// Size of each result, at least (results are never shorter than their
    /// id and digest).
    #[serde(default = "default_output_bytes")]
    pub output_bytes: usize,
    /// Row ids whose batch fails.
    #[serde(default)]
    pub fail_ids: Vec<toml::Value>,
    /// Row ids whose batch panics.
    #[serde(default)]
    pub panic_ids: Vec<toml::Value>,
    /// Panic in every model load.
    #[serde(default)]
    pub load_panics: bool,
    /// The first model loaded is this many times slower (a lagging actor,
    /// in actors mode; in tasks mode the one shared model).
    #[serde(default = "one")]
    pub lag_factor: f64,
    /// The text field's name.
    #[serde(default = "default_text")]
    pub text_field: String,
    /// The id field's name.
    #[serde(default = "default_id")]
    pub id_field: String,
}

fn default_output_bytes() -> usize {
    64
}
fn one() -> f64 {
    1.0
}
fn default_text() -> String {
    "text".into()
}
fn default_id() -> String {
    "id".into()
}

/// The synthetic backend.
pub struct Synthetic {
    opts: SyntheticOptions,
    loads: std::sync::atomic::AtomicUsize,
    fail: HashSet<String>,
    panic: HashSet<String>,
}

/// Builds `synthetic` from its options.
pub fn create(options: &BackendOptions) -> Result<Arc<dyn Backend>, Vec<ConfigProblem>> {
    let opts: SyntheticOptions = options.parse()?;
    let mut problems = Vec::new();
    let mut ids = |key: &str, values: &[toml::Value]| -> HashSet<String> {
        let mut set = HashSet::new();
        for (i, v) in values.iter().enumerate() {
            match v {
                toml::Value::Integer(_) | toml::Value::String(_) => {
                    set.insert(serde_json::to_string(v).unwrap_or_default());
                }
                _ => problems.push(ConfigProblem::new(
                    format!("model.options.{key}[{i}]"),
                    "expected an integer or a string id",
                )),
            }
        }
        set
    };
    let fail = ids("fail_ids", &opts.fail_ids);
    let panic = ids("panic_ids", &opts.panic_ids);
    if opts.text_field == opts.id_field {
        problems.push(ConfigProblem::new(
            "model.options.id_field",
            "must differ from model.options.text_field",
        ));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    if !(opts.lag_factor.is_finite() && opts.lag_factor >= 1.0) {
        return Err(vec![ConfigProblem::new(
            "model.options.lag_factor",
            format!("expected 1 or more, found {}", opts.lag_factor),
        )]);
    }
    Ok(Arc::new(Synthetic {
        opts,
        loads: Default::default(),
        fail,
        panic,
    }))
}

const BASE_BYTES: usize = 44;

impl Backend for Synthetic {
    fn schema(&self) -> RequestSchema {
        RequestSchema::text_with_id(&self.opts.text_field, &self.opts.id_field)
    }

    fn result_bytes_bound(&self, rows: usize, input_bytes: usize) -> usize {
        rows * self.opts.output_bytes.max(BASE_BYTES) + input_bytes
    }

    fn load(&self, _device: &Device) -> Result<Arc<dyn Model>, ModelError> {
        spend(Duration::from_millis(self.opts.load_ms), false);
        if self.opts.load_panics {
            panic!("synthetic panic while loading");
        }
        let first = self.loads.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
        Ok(Arc::new(SyntheticModel {
            slowdown: if first { self.opts.lag_factor } else { 1.0 },
            opts: self.opts.clone(),
            fail: self.fail.clone(),
            panic: self.panic.clone(),
        }))
    }
}

struct SyntheticModel {
    opts: SyntheticOptions,
    slowdown: f64,
    fail: HashSet<String>,
    panic: HashSet<String>,
}

/// FNV-1a, 64 bits: a stable digest that needs no dependency.
pub fn digest(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn spend(d: Duration, busy: bool) {
    if d.is_zero() {
        return;
    }
    if busy {
        let end = Instant::now() + d;
        let mut x = 0u64;
        while Instant::now() < end {
            for i in 0..1000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
        }
    } else {
        std::thread::sleep(d);
    }
}

impl SyntheticModel {
    /// Writes one result, padded to `output_bytes`.
    fn result(&self, id: Option<&str>, text: &str, w: &mut dyn Write) -> std::fmt::Result {
        let mut len = 1;
        w.write_char('{')?;
        if let Some(id) = id {
            write!(w, "\"id\":{id},")?;
            len += 6 + id.len();
        }
        write!(w, "\"digest\":\"{:016x}\"", digest(text))?;
        len += 27;
        let room = self.opts.output_bytes.saturating_sub(len + 1);
        if room >= 9 {
            w.write_str(",\"pad\":\"")?;
            for _ in 0..room - 9 {
                w.write_char('x')?;
            }
            w.write_char('"')?;
        }
        w.write_char('}')
    }
}

impl Model for SyntheticModel {
    fn predict(&self, batch: &RequestBatch, out: &mut ResultWriter) -> Result<(), ModelError> {
        let n = batch.len();
        let cost = Duration::from_millis(self.opts.batch_ms)
            + Duration::from_micros(self.opts.row_us * n as u64);
        spend(cost.mul_f64(self.slowdown), self.opts.busy);
        for i in 0..n {
            let id = batch.field(1, i);
            if let Some(id) = id {
                if self.panic.contains(id) {
                    panic!("synthetic panic for row id {id}");
                }
                if self.fail.contains(id) {
                    return Err(ModelError::for_row(
                        batch.row(i),
                        format!("synthetic failure for row id {id}"),
                    ));
                }
            }
            let text = batch.field(0, i).unwrap_or_default();
            out.push_with(batch.row(i), |w| self.result(id, text, w))
                .map_err(|_| ModelError::new("formatting a result failed"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_are_padded_to_output_bytes() {
        for output_bytes in [0, 40, 64, 200] {
            let m = SyntheticModel {
                slowdown: 1.0,
                opts: SyntheticOptions {
                    output_bytes,
                    ..create_opts()
                },
                fail: HashSet::new(),
                panic: HashSet::new(),
            };
            let mut s = String::new();
            m.result(Some("\"a7\""), "hello", &mut s).unwrap();
            let v: serde_json::Value = serde_json::from_str(&s).unwrap();
            assert_eq!(v["id"], "a7");
            assert_eq!(v["digest"], format!("{:016x}", digest("hello")));
            assert!(s.len() <= output_bytes.max(BASE_BYTES) + 4, "{s}");
            if output_bytes >= 60 {
                assert_eq!(s.len(), output_bytes, "{s}");
            }
        }
    }

    fn create_opts() -> SyntheticOptions {
        BackendOptions::default().parse().unwrap()
    }

    #[test]
    fn options_are_checked() {
        let mut t = toml::Table::new();
        t.insert(
            "fail_ids".into(),
            toml::Value::Array(vec![toml::Value::Float(1.5)]),
        );
        t.insert("id_field".into(), toml::Value::String("text".into()));
        let Err(p) = create(&BackendOptions::new(t)) else {
            panic!("accepted")
        };
        assert_eq!(p.len(), 2, "{p:?}");
        assert_eq!(p[0].key, "model.options.fail_ids[0]");
        let mut t = toml::Table::new();
        t.insert("load_msec".into(), toml::Value::Integer(1));
        let Err(p) = create(&BackendOptions::new(t)) else {
            panic!("accepted")
        };
        assert!(p[0].message.contains("load_msec"), "{p:?}");
    }
}
