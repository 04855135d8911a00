//! `openai-http`: each batch sent to an OpenAI-compatible server (vLLM,
//! text-embeddings-inference, infinity, llama.cpp's server, OpenAI) as
//! concurrent HTTP requests, with stook's order, budget, resume and
//! per-line errors around it.
//!
//! ```text
//!  schema = "openai": each OpenAI Batch line → POST base_url + its url
//!                     (/v1/embeddings, /v1/chat/completions, …) with its
//!                     body as it is → the server's status and body in the
//!                     line's output (see super::openai)
//!  schema = "text":   {"id", "text"} rows, texts_per_request to a request
//!                     → POST base_url/embeddings → {"id", "embedding"}
//! ```
//!
//! A request is retried on 429, 5xx and connection failures, with
//! exponential backoff (0.5 s doubling, 20 s at most) or the server's
//! `Retry-After`, `max_retries` times; then a 429 or 5xx answer becomes
//! the line's error output, and a server that cannot be reached fails the
//! batch as a whole ([`ModelError::unavailable`]): the run stops after the
//! batch's retries, keeping every committed shard, and a rerun resumes.
//! The API key is read from the environment variable `api_key_env` and
//! goes nowhere but the `Authorization` header.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow_array::builder::{Float32Builder, ListBuilder};
use arrow_array::ArrayRef;
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use serde::Deserialize;
use stook_actors::json_lines::{self, with_meta};
use stook_actors::{Backend, Device, Model, ModelError, RequestBatch, RequestSchema, ResultWriter};

use super::openai;
use crate::config::{ConfigProblem, Seconds};
use crate::registry::BackendOptions;

/// `[model.options]` of `openai-http`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpOptions {
    /// The server's API root, e.g. `http://127.0.0.1:8000/v1`.
    pub base_url: String,
    /// The environment variable holding the API key, if the server wants
    /// one (sent as `Authorization: Bearer …`).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// `openai` (OpenAI Batch lines, forwarded) or `text` (`{"id",
    /// "text"}` rows, embedded).
    #[serde(default)]
    pub schema: HttpSchema,
    /// `body.model` of the text schema's requests.
    #[serde(default)]
    pub model: Option<String>,
    /// The text schema's text field.
    #[serde(default = "default_text")]
    pub text_field: String,
    /// The text schema's id field.
    #[serde(default = "default_id")]
    pub id_field: String,
    /// Requests in flight at once, per actor.
    #[serde(default = "default_concurrency")]
    pub max_concurrency: usize,
    /// The longest one request may take, answer included.
    #[serde(default = "default_timeout")]
    pub timeout: Seconds,
    /// Retries of one request (429, 5xx, connection failures).
    #[serde(default = "default_retries")]
    pub max_retries: u32,
    /// The text schema's texts in one request.
    #[serde(default = "default_texts")]
    pub texts_per_request: usize,
    /// The longest response body one line may get (openai schema): room
    /// for it is reserved in the store; a longer one is the line's error.
    #[serde(default = "default_response_bytes")]
    pub max_response_bytes: usize,
    /// The longest vector the server may return (text schema): room for
    /// it is reserved in the store; a longer one fails its row.
    #[serde(default = "default_dimensions")]
    pub max_dimensions: usize,
}

/// `[model.options] schema` of `openai-http`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HttpSchema {
    /// OpenAI Batch API lines.
    #[default]
    Openai,
    /// `{"id": …, "text": "…"}` → `{"id": …, "embedding": […]}`.
    Text,
}

fn default_text() -> String {
    "text".into()
}
fn default_id() -> String {
    "id".into()
}
fn default_concurrency() -> usize {
    16
}
fn default_timeout() -> Seconds {
    Seconds(Duration::from_secs(60))
}
fn default_retries() -> u32 {
    6
}
fn default_texts() -> usize {
    32
}
fn default_response_bytes() -> usize {
    64 << 10
}
fn default_dimensions() -> usize {
    4096
}

/// The backend: options checked, nothing contacted yet.
pub struct OpenaiHttp {
    opts: HttpOptions,
    key: Option<String>,
}

/// Builds `openai-http` from its options, every problem at once.
pub fn create(options: &BackendOptions) -> Result<Arc<dyn Backend>, Vec<ConfigProblem>> {
    let opts: HttpOptions = options.parse()?;
    let mut problems = Vec::new();
    let mut problem = |key: &str, message: String| {
        problems.push(ConfigProblem::new(format!("model.options.{key}"), message));
    };
    if !(opts.base_url.starts_with("http://") || opts.base_url.starts_with("https://")) {
        problem(
            "base_url",
            format!(
                "expected an http:// or https:// URL such as \"http://127.0.0.1:8000/v1\", found {:?}",
                opts.base_url
            ),
        );
    }
    for (key, value, most) in [
        ("max_concurrency", opts.max_concurrency, 1024),
        (
            "texts_per_request",
            opts.texts_per_request,
            openai::MAX_INPUTS,
        ),
        ("max_dimensions", opts.max_dimensions, 1 << 20),
    ] {
        if !(1..=most).contains(&value) {
            problem(key, format!("expected 1 to {most}, found {value}"));
        }
    }
    if opts.max_retries > 100 {
        problem(
            "max_retries",
            format!("expected at most 100, found {}", opts.max_retries),
        );
    }
    if opts.max_response_bytes < 1024 {
        problem(
            "max_response_bytes",
            format!("expected at least 1024, found {}", opts.max_response_bytes),
        );
    }
    if opts.timeout.0.is_zero() {
        problem("timeout", "expected more than 0 seconds".into());
    }
    if opts.schema == HttpSchema::Text && opts.model.is_none() {
        problem(
            "model",
            "the text schema needs the model name its requests carry (body.model)".into(),
        );
    }
    let key = match &opts.api_key_env {
        Some(var) => {
            match std::env::var(var) {
                Ok(k) if !k.is_empty() => Some(k),
                _ => {
                    problem(
                    "api_key_env",
                    format!("the environment variable {var} is not set (it should hold the API key)"),
                );
                    None
                }
            }
        }
        None => None,
    };
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Arc::new(OpenaiHttp { opts, key }))
}

impl Backend for OpenaiHttp {
    fn schema(&self) -> RequestSchema {
        match self.opts.schema {
            HttpSchema::Openai => openai::schema(),
            HttpSchema::Text => {
                RequestSchema::text_with_id(&self.opts.text_field, &self.opts.id_field)
            }
        }
    }

    fn result_bytes_bound(&self, rows: usize, input_bytes: usize) -> usize {
        match self.opts.schema {
            // Each line's envelope and copied values, and its body.
            HttpSchema::Openai => rows * (1024 + self.opts.max_response_bytes) + 3 * input_bytes,
            // The id's JSON text and a vector of 4-byte floats.
            HttpSchema::Text => input_bytes + rows * 4 * self.opts.max_dimensions,
        }
    }

    fn output_schema(&self) -> Option<SchemaRef> {
        Some(match self.opts.schema {
            HttpSchema::Openai => openai::columns(),
            HttpSchema::Text => {
                let id = Field::new("id", DataType::Utf8, true);
                let item = Arc::new(Field::new("item", DataType::Float32, true));
                Arc::new(Schema::new(vec![
                    with_meta(id, json_lines::ENCODING, json_lines::JSON_TEXT),
                    Field::new("embedding", DataType::List(item), false),
                ]))
            }
        })
    }

    fn result_neutral_options(&self) -> &'static [&'static str] {
        // Where the server is and how it is driven; not what it computes.
        &[
            "base_url",
            "api_key_env",
            "max_concurrency",
            "timeout",
            "max_retries",
            "texts_per_request",
        ]
    }

    fn load(&self, _: &Device) -> Result<Arc<dyn Model>, ModelError> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(self.opts.timeout.0))
            .max_idle_connections_per_host(self.opts.max_concurrency)
            .build()
            .into();
        let client = Client {
            agent,
            base: self.opts.base_url.trim_end_matches('/').to_string(),
            key: self.key.clone(),
            retries: self.opts.max_retries,
        };
        // The server must answer before any row is sent.
        let models = format!("{}/models", client.base);
        match client.send("GET", &models, None, 1 << 20) {
            Ok(a) if a.status == 200 => {}
            Ok(a) => {
                return Err(ModelError::new(format!(
                    "{models} answered {}: {}",
                    a.status,
                    short(&a.body)
                )))
            }
            Err(e) => return Err(ModelError::new(e)),
        }
        Ok(Arc::new(HttpModel {
            client,
            opts: self.opts.clone(),
        }))
    }
}

fn short(s: &str) -> &str {
    let mut end = s.len().min(300);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A server's answer.
struct Answer {
    status: u16,
    body: String,
}

struct Client {
    agent: ureq::Agent,
    base: String,
    key: Option<String>,
    retries: u32,
}

impl Client {
    /// The full URL of an OpenAI path (`/v1/embeddings`) under the base.
    fn url(&self, path: &str) -> String {
        let rest = match self.base.ends_with("/v1") {
            true => path.strip_prefix("/v1").unwrap_or(path),
            false => path,
        };
        format!("{}{rest}", self.base)
    }

    /// One request, retried on 429, 5xx and failures to connect; `Err`
    /// when the server cannot be reached after every retry. An answer
    /// longer than `limit` bytes is status 0, saying so.
    fn send(
        &self,
        method: &str,
        url: &str,
        body: Option<&str>,
        limit: usize,
    ) -> Result<Answer, String> {
        let mut attempt = 0;
        loop {
            let sent = match body {
                Some(b) => {
                    let r = self
                        .agent
                        .post(url)
                        .header("Content-Type", "application/json");
                    self.auth(r).send(b.as_bytes())
                }
                None if method == "GET" => self.auth(self.agent.get(url)).call(),
                None => return Err(format!("internal: {method} without a body")),
            };
            let (retry, wait) = match sent {
                Ok(mut resp) => {
                    let status = resp.status().as_u16();
                    let wait = resp
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<f64>().ok())
                        .map(|s| Duration::from_secs_f64(s.clamp(0.0, 60.0)));
                    if (status == 429 || status >= 500) && attempt < self.retries {
                        tracing::warn!(url, status, attempt, "server busy or failing; retrying");
                        (true, wait)
                    } else {
                        let read = resp
                            .body_mut()
                            .with_config()
                            .limit(limit as u64)
                            .read_to_string();
                        return Ok(match read {
                            Ok(body) => Answer { status, body },
                            Err(ureq::Error::BodyExceedsLimit(_)) => Answer {
                                status: 0,
                                body: format!("the response is longer than {limit} bytes"),
                            },
                            Err(e) if attempt < self.retries => {
                                tracing::warn!(url, error = %e, attempt, "reading the response failed; retrying");
                                attempt += 1;
                                std::thread::sleep(backoff(attempt, None));
                                continue;
                            }
                            Err(e) => return Err(format!("{url}: reading the response: {e}")),
                        });
                    }
                }
                Err(e) if attempt < self.retries => {
                    tracing::warn!(url, error = %e, attempt, "server unreachable; retrying");
                    (true, None)
                }
                Err(e) => {
                    return Err(format!(
                    "{url}: {e} (after {} retries; committed output is kept, run again to resume)",
                    self.retries
                ))
                }
            };
            debug_assert!(retry);
            attempt += 1;
            std::thread::sleep(backoff(attempt, wait));
        }
    }

    fn auth<B>(&self, r: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.key {
            Some(k) => r.header("Authorization", format!("Bearer {k}")),
            None => r,
        }
    }
}

/// The wait before retry `attempt` (1-based): the server's `Retry-After`,
/// else 0.5 s doubling up to 20 s, each with up to a quarter more at
/// random so that workers do not retry in step.
fn backoff(attempt: u32, server: Option<Duration>) -> Duration {
    let base = server.unwrap_or_else(|| {
        Duration::from_millis(500).saturating_mul(1 << attempt.saturating_sub(1).min(6))
    });
    let base = base.min(Duration::from_secs(60));
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    base + base.mul_f64(f64::from(nanos % 1000) / 4000.0)
}

/// JSON text without whitespace outside its strings (a server's body on
/// one line), or `None` when it is not one JSON value.
fn one_line_json(body: &str) -> Option<String> {
    serde_json::from_str::<serde::de::IgnoredAny>(body).ok()?;
    let mut out = String::with_capacity(body.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in body.chars() {
        if in_string {
            out.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            in_string = c == '"';
            out.push(c);
        }
    }
    Some(out)
}

struct HttpModel {
    client: Client,
    opts: HttpOptions,
}

impl HttpModel {
    /// Runs `jobs` on up to `max_concurrency` threads; answers in order.
    fn all<T: Sync, R: Send>(&self, jobs: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
        let next = AtomicUsize::new(0);
        let slots: Vec<Mutex<Option<R>>> = jobs.iter().map(|_| Mutex::new(None)).collect();
        std::thread::scope(|s| {
            for _ in 0..self.opts.max_concurrency.min(jobs.len()) {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(job) = jobs.get(i) else { break };
                    let r = f(job);
                    if let Ok(mut slot) = slots[i].lock() {
                        *slot = Some(r);
                    }
                });
            }
        });
        slots
            .into_iter()
            .map(|m| {
                m.into_inner()
                    .ok()
                    .flatten()
                    .expect("every job is answered")
            })
            .collect()
    }

    fn predict_openai(
        &self,
        batch: &RequestBatch,
        out: &mut ResultWriter,
    ) -> Result<(), ModelError> {
        let routed: Vec<Option<Result<(String, &str), openai::Refusal>>> = (0..batch.len())
            .map(|i| {
                batch
                    .problem(i)
                    .is_none()
                    .then(|| openai::endpoint(batch, i, &openai::BATCH_ENDPOINTS))
            })
            .collect();
        let answers = self.all(&routed, |r| match r {
            Some(Ok((url, body))) => {
                let limit = self.opts.max_response_bytes;
                Some(
                    self.client
                        .send("POST", &self.client.url(url), Some(body), limit),
                )
            }
            _ => None,
        });
        let mut lines = openai::Lines::default();
        for (i, (route, answer)) in routed.iter().zip(answers).enumerate() {
            match (route, answer) {
                (None, _) => lines.unreadable(batch, i, batch.problem(i).unwrap_or_default()),
                (Some(Err(why)), _) => lines.refuse(batch, i, why),
                (_, Some(Err(e))) => return Err(ModelError::unavailable(e)),
                (_, Some(Ok(a))) if a.status == 0 => lines.failed_upstream(
                    batch,
                    i,
                    502,
                    format!("{} (model.options.max_response_bytes)", a.body),
                ),
                (_, Some(Ok(a))) => match one_line_json(&a.body) {
                    Some(body) => lines.forwarded(batch, i, a.status, &body),
                    None if a.status == 200 => lines.failed_upstream(
                        batch,
                        i,
                        502,
                        format!("the server's response is not JSON: {}", short(&a.body)),
                    ),
                    None => lines.failed_upstream(batch, i, a.status, short(&a.body).to_string()),
                },
                (_, None) => return Err(ModelError::new("internal: a request was not sent")),
            }
        }
        out.count("error_lines", lines.failed);
        out.append(batch.rows(), lines.finish())
    }

    /// Embeddings of `texts` in one request, or why not: `(true, …)` when
    /// the server cannot be reached, `(false, …)` when it refused them.
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, (bool, String)> {
        let body = serde_json::json!({
            "model": self.opts.model,
            "input": texts,
            "encoding_format": "float",
        });
        let url = self.client.url(openai::EMBEDDINGS);
        // A float's JSON text is at most 25 bytes or so; 32 leaves room
        // for the keys and whitespace of any server.
        let limit = 4096 + texts.len() * (256 + 32 * self.opts.max_dimensions);
        let a = self
            .client
            .send("POST", &url, Some(&body.to_string()), limit)
            .map_err(|e| (true, e))?;
        if a.status == 0 {
            return Err((
                false,
                format!("{url}: {} (model.options.max_dimensions)", a.body),
            ));
        }
        if a.status != 200 {
            return Err((
                false,
                format!("{url} answered {}: {}", a.status, short(&a.body)),
            ));
        }
        #[derive(Deserialize)]
        struct Item {
            index: usize,
            embedding: Vec<f32>,
        }
        #[derive(Deserialize)]
        struct Body {
            data: Vec<Item>,
        }
        let b: Body = serde_json::from_str(&a.body)
            .map_err(|e| (false, format!("{url}: not an embeddings response: {e}")))?;
        let mut vectors = vec![Vec::new(); texts.len()];
        for item in b.data {
            if item.embedding.len() > self.opts.max_dimensions {
                return Err((
                    false,
                    format!(
                        "{url}: a vector of {} values, more than model.options.max_dimensions = {}",
                        item.embedding.len(),
                        self.opts.max_dimensions
                    ),
                ));
            }
            if let Some(v) = vectors.get_mut(item.index) {
                *v = item.embedding;
            }
        }
        if vectors.iter().any(Vec::is_empty) {
            return Err((
                false,
                format!(
                    "{url}: the response lacks some of the {} vectors",
                    texts.len()
                ),
            ));
        }
        Ok(vectors)
    }

    fn predict_text(&self, batch: &RequestBatch, out: &mut ResultWriter) -> Result<(), ModelError> {
        let texts: Vec<&str> = (0..batch.len())
            .map(|i| batch.field(0, i).unwrap_or_default())
            .collect();
        let groups: Vec<std::ops::Range<usize>> = (0..texts.len())
            .step_by(self.opts.texts_per_request)
            .map(|a| a..(a + self.opts.texts_per_request).min(texts.len()))
            .collect();
        let answers = self.all(&groups, |g| self.embed(&texts[g.clone()]));
        let mut builder = ListBuilder::new(Float32Builder::new());
        for (g, answer) in groups.into_iter().zip(answers) {
            let vectors = match answer {
                Ok(v) => v,
                Err((true, e)) => return Err(ModelError::unavailable(e)),
                // Refused as a group: each text alone names the one at fault.
                Err((false, e)) if g.len() == 1 => {
                    return Err(ModelError::for_row(batch.row(g.start), e))
                }
                Err((false, _)) => {
                    let mut one = Vec::with_capacity(g.len());
                    for i in g {
                        match self.embed(&texts[i..=i]) {
                            Ok(mut v) => one.push(v.remove(0)),
                            Err((true, e)) => return Err(ModelError::unavailable(e)),
                            Err((false, e)) => return Err(ModelError::for_row(batch.row(i), e)),
                        }
                    }
                    one
                }
            };
            for v in vectors {
                builder.values().append_slice(&v);
                builder.append(true);
            }
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(batch.field_array(1).clone()),
            Arc::new(builder.finish()),
        ];
        out.append(batch.rows(), columns)
    }
}

impl Model for HttpModel {
    fn predict(&self, batch: &RequestBatch, out: &mut ResultWriter) -> Result<(), ModelError> {
        match self.opts.schema {
            HttpSchema::Openai => self.predict_openai(batch, out),
            HttpSchema::Text => self.predict_text(batch, out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_put_on_one_line_with_strings_untouched() {
        let body = "{\n  \"a\": [1, 2.5e-7],\n  \"s\": \"x \\\" y\\n  z\"\n}\n";
        assert_eq!(
            one_line_json(body).unwrap(),
            "{\"a\":[1,2.5e-7],\"s\":\"x \\\" y\\n  z\"}"
        );
        assert_eq!(one_line_json("<html>"), None);
        assert_eq!(one_line_json("{} {}"), None);
    }

    #[test]
    fn backoff_doubles_and_follows_the_server() {
        let a = backoff(1, None);
        assert!(
            a >= Duration::from_millis(500) && a < Duration::from_millis(626),
            "{a:?}"
        );
        let b = backoff(3, None);
        assert!(
            b >= Duration::from_secs(2) && b < Duration::from_millis(2501),
            "{b:?}"
        );
        assert!(backoff(30, None) <= Duration::from_secs(40));
        let s = backoff(1, Some(Duration::from_secs(7)));
        assert!(
            s >= Duration::from_secs(7) && s < Duration::from_secs(9),
            "{s:?}"
        );
    }
}
