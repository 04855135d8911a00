//! The OpenAI Batch API's file format (what OpenAI, Azure and vLLM's
//! `run_batch` read and write), for embeddings:
//!
//! ```text
//!  in:  {"custom_id": "r1", "method": "POST", "url": "/v1/embeddings",
//!        "body": {"model": "m", "input": "text" | ["texts", …],
//!                 "encoding_format": "float" | "base64", "dimensions": N}}
//!  out: {"id": "batch_req_…", "custom_id": "r1",
//!        "response": {"status_code": 200, "request_id": "req_…",
//!                     "body": {"object": "list", "data": [{"object": "embedding",
//!                              "index": 0, "embedding": […] | "<base64>"}],
//!                              "model": "m", "usage": {"prompt_tokens": N,
//!                              "total_tokens": N}}},
//!        "error": null}
//! ```
//!
//! Every line gets exactly one output line, in input order: a request that
//! fails alone is answered with `status_code` 400 and OpenAI's error body
//! (`{"error": {"message", "type": "invalid_request_error", "param",
//! "code"}}`); a line that is not a request at all (not JSON, no
//! `custom_id`) with `"response": null` and `"error": {"code":
//! "invalid_json_line", "message", "line"}`. Ids are digests of the input's
//! content and the row, so a rerun writes the same bytes. A repeated
//! `custom_id` is refused before the run, naming both lines.

use std::sync::Arc;

use arrow_array::{ArrayRef, StringArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use base64::Engine as _;
use serde_json::Value;
use sha2::{Digest, Sha256};
use stook_actors::json_lines::{self, push_f32, push_json_string, with_meta};
use stook_actors::{FieldKind, FieldSpec, RequestBatch, RequestSchema};

/// Columns of the request schema, in [`schema`] order.
pub const CUSTOM_ID: usize = 0;
/// `method`.
pub const METHOD: usize = 1;
/// `url`.
pub const URL: usize = 2;
/// `body`.
pub const BODY: usize = 3;

/// The endpoint the embedding backend serves.
pub const EMBEDDINGS: &str = "/v1/embeddings";
/// The most inputs in one request, as OpenAI allows.
pub const MAX_INPUTS: usize = 2048;

/// What each line must hold to be a request: a string `custom_id`; the
/// rest is checked per request, so that a bad one is answered with its
/// `custom_id`.
pub fn schema() -> RequestSchema {
    let f = FieldSpec::new;
    RequestSchema {
        fields: vec![
            f("custom_id", FieldKind::String, true),
            f("method", FieldKind::Json, false),
            f("url", FieldKind::Json, false),
            f("body", FieldKind::Json, false),
        ],
        keep_raw: false,
        answer_bad_rows: true,
        unique: Some(CUSTOM_ID),
    }
}

/// The output columns: `id`, `custom_id`, and `response` and `error` as
/// JSON text; every key is written, null or not.
pub fn columns() -> SchemaRef {
    let keep = |f: Field| with_meta(f, json_lines::NULLS, json_lines::WRITE);
    let text = |name: &str| {
        keep(with_meta(
            Field::new(name, DataType::Utf8, true),
            json_lines::ENCODING,
            json_lines::JSON_TEXT,
        ))
    };
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        keep(Field::new("custom_id", DataType::Utf8, true)),
        text("response"),
        text("error"),
    ]))
}

/// An upper bound of the output bytes of `rows` lines spanning
/// `input_bytes`, with `quotes` `"`s among them, for vectors of `dim`
/// values: each line's envelope, ids and messages (1 KiB), what is copied
/// from the input (`custom_id`, `model`, values quoted in messages: each
/// at most its JSON text), and for each text (2 quotes at least) an item
/// of at most 18 bytes a value (base64 is shorter).
pub fn bound(rows: usize, input_bytes: usize, quotes: usize, dim: usize) -> usize {
    rows * 1024 + 3 * input_bytes + quotes / 2 * (64 + 18 * dim)
}

/// How a request's vectors are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// A list of numbers.
    Float,
    /// Base64 of the little-endian f32 bytes.
    Base64,
}

/// A request that can be run: its model name, texts and encoding.
#[derive(Debug, PartialEq)]
pub struct Request {
    /// `body.model`, echoed in the response.
    pub model: String,
    /// `body.input`, as a list.
    pub texts: Vec<String>,
    /// `body.encoding_format`.
    pub encoding: Encoding,
}

/// Why a request is refused: OpenAI's error body fields.
#[derive(Debug, PartialEq)]
pub struct Refusal {
    /// What is wrong.
    pub message: String,
    /// The request key at fault.
    pub param: Option<&'static str>,
}

fn refuse<T>(param: Option<&'static str>, message: impl Into<String>) -> Result<T, Refusal> {
    Err(Refusal {
        message: message.into(),
        param,
    })
}

/// The endpoints OpenAI's Batch API serves, which `openai-http` forwards.
pub const BATCH_ENDPOINTS: [&str; 5] = [
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/completions",
    "/v1/responses",
    "/v1/moderations",
];

/// Row `i`'s `url` (one of `served`) and its `body`'s JSON text, or why it
/// is refused: a method other than POST, another url, a body that is not
/// an object.
pub fn endpoint<'b>(
    batch: &'b RequestBatch,
    i: usize,
    served: &[&str],
) -> Result<(String, &'b str), Refusal> {
    let value = |field| batch.field(field, i).map(serde_json::from_str::<Value>);
    match value(METHOD) {
        Some(Ok(Value::String(m))) if m == "POST" => {}
        Some(Ok(m)) => return refuse(None, format!("method {m} is not supported; use \"POST\"")),
        _ => return refuse(None, "missing method (expected \"POST\")"),
    }
    let url = match value(URL) {
        Some(Ok(Value::String(u))) if served.contains(&u.as_str()) => u,
        Some(Ok(u)) => {
            return refuse(
                None,
                format!(
                    "url {u} is not served by this backend; it serves {}",
                    quoted(served)
                ),
            )
        }
        _ => return refuse(None, format!("missing url (expected {})", quoted(served))),
    };
    match batch.field(BODY, i) {
        Some(b) if b.trim_start().starts_with('{') => Ok((url, b)),
        _ => refuse(None, "missing body (expected a JSON object)"),
    }
}

fn quoted(urls: &[&str]) -> String {
    let q: Vec<String> = urls.iter().map(|u| format!("{u:?}")).collect();
    q.join(", ")
}

/// Reads row `i` of `batch` as an embeddings request for a model of `dim`
/// dimensions, or says why it is refused.
pub fn request(batch: &RequestBatch, i: usize, dim: usize) -> Result<Request, Refusal> {
    let (_, body) = endpoint(batch, i, &[EMBEDDINGS])?;
    let body = match serde_json::from_str::<Value>(body) {
        Ok(Value::Object(b)) => b,
        _ => return refuse(None, "missing body (expected a JSON object)"),
    };
    let model = match body.get("model") {
        Some(Value::String(m)) => m.clone(),
        None | Some(Value::Null) => {
            return refuse(Some("model"), "you must provide a model parameter")
        }
        Some(m) => return refuse(Some("model"), format!("model {m} is not a string")),
    };
    let texts = match body.get("input") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => {
            if items.is_empty() {
                return refuse(
                    Some("input"),
                    "input is an empty list; send at least one text",
                );
            }
            if items.len() > MAX_INPUTS {
                return refuse(
                    Some("input"),
                    format!(
                        "input holds {} items; at most {MAX_INPUTS} per request",
                        items.len()
                    ),
                );
            }
            let mut texts = Vec::with_capacity(items.len());
            for (k, item) in items.iter().enumerate() {
                match item {
                    Value::String(s) => texts.push(s.clone()),
                    Value::Number(_) | Value::Array(_) => {
                        return refuse(
                            Some("input"),
                            "input as token ids is not supported by this backend; send text",
                        )
                    }
                    v => {
                        return refuse(
                            Some("input"),
                            format!("input[{k}] is {v}, expected a string"),
                        )
                    }
                }
            }
            texts
        }
        None | Some(Value::Null) => return refuse(Some("input"), "input is required"),
        Some(v) => {
            return refuse(
                Some("input"),
                format!("input is {v}, expected a string or a list of strings"),
            )
        }
    };
    if let Some(k) = texts.iter().position(String::is_empty) {
        let which = if texts.len() == 1 {
            "input".to_string()
        } else {
            format!("input[{k}]")
        };
        return refuse(Some("input"), format!("{which} is an empty string"));
    }
    let encoding = match body.get("encoding_format") {
        None | Some(Value::Null) => Encoding::Float,
        Some(Value::String(s)) if s == "float" => Encoding::Float,
        Some(Value::String(s)) if s == "base64" => Encoding::Base64,
        Some(v) => {
            return refuse(
                Some("encoding_format"),
                format!("encoding_format {v} is not supported; use \"float\" or \"base64\""),
            )
        }
    };
    match body.get("dimensions") {
        None | Some(Value::Null) => {}
        Some(Value::Number(n)) if n.as_u64() == Some(dim as u64) => {}
        Some(v) => {
            return refuse(
                Some("dimensions"),
                format!(
                    "this model gives {dim} dimensions and cannot shorten them; dimensions {v} \
                     cannot be given"
                ),
            )
        }
    }
    Ok(Request {
        model,
        texts,
        encoding,
    })
}

/// A 128-bit digest of the input's content key and a row, as hex: ids that
/// are the same on every run over the same input.
fn digest(tag: &str, input_key: &str, row: u64) -> String {
    let mut h = Sha256::new();
    h.update(tag.as_bytes());
    h.update([0]);
    h.update(input_key.as_bytes());
    h.update(row.to_le_bytes());
    h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One output line's columns, built row by row.
#[derive(Default)]
pub struct Lines {
    ids: Vec<String>,
    custom_ids: Vec<Option<String>>,
    responses: Vec<Option<String>>,
    errors: Vec<Option<String>>,
    /// Lines answered with an error (400, 500, or not a request).
    pub failed: u64,
}

impl Lines {
    fn start(&mut self, batch: &RequestBatch, i: usize) -> String {
        let (key, row) = (batch.input_key(), batch.row(i));
        self.ids
            .push(format!("batch_req_{}", digest("id", key, row)));
        self.custom_ids
            .push(batch.field(CUSTOM_ID, i).map(str::to_string));
        format!("req_{}", digest("request", key, row))
    }

    /// Row `i`'s embeddings, with the tokens the model saw for each.
    pub fn answer(
        &mut self,
        batch: &RequestBatch,
        i: usize,
        req: &Request,
        vectors: &[Vec<f32>],
        tokens: usize,
    ) {
        let request_id = self.start(batch, i);
        let dim = vectors.first().map_or(0, Vec::len);
        let mut r = String::with_capacity(256 + vectors.len() * dim * 12);
        r.push_str("{\"status_code\":200,\"request_id\":");
        push_json_string(&mut r, &request_id);
        r.push_str(",\"body\":{\"object\":\"list\",\"data\":[");
        for (k, v) in vectors.iter().enumerate() {
            if k > 0 {
                r.push(',');
            }
            r.push_str("{\"object\":\"embedding\",\"index\":");
            r.push_str(&k.to_string());
            r.push_str(",\"embedding\":");
            match req.encoding {
                Encoding::Float => {
                    r.push('[');
                    for (j, x) in v.iter().enumerate() {
                        if j > 0 {
                            r.push(',');
                        }
                        push_f32(&mut r, *x);
                    }
                    r.push(']');
                }
                Encoding::Base64 => {
                    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                    r.push('"');
                    base64::engine::general_purpose::STANDARD.encode_string(bytes, &mut r);
                    r.push('"');
                }
            }
            r.push('}');
        }
        r.push_str("],\"model\":");
        push_json_string(&mut r, &req.model);
        r.push_str(&format!(
            ",\"usage\":{{\"prompt_tokens\":{tokens},\"total_tokens\":{tokens}}}}}}}"
        ));
        self.responses.push(Some(r));
        self.errors.push(None);
    }

    /// Row `i` refused as a request: status 400 and OpenAI's error body.
    pub fn refuse(&mut self, batch: &RequestBatch, i: usize, why: &Refusal) {
        self.error_response(batch, i, 400, "invalid_request_error", why);
    }

    /// Row `i` failed in the model (`message` says how): status 500.
    pub fn fail(&mut self, batch: &RequestBatch, i: usize, message: String) {
        let why = Refusal {
            message,
            param: None,
        };
        self.error_response(batch, i, 500, "server_error", &why);
    }

    fn error_response(
        &mut self,
        batch: &RequestBatch,
        i: usize,
        status: u16,
        kind: &str,
        why: &Refusal,
    ) {
        let request_id = self.start(batch, i);
        let mut r = format!("{{\"status_code\":{status},\"request_id\":");
        push_json_string(&mut r, &request_id);
        r.push_str(",\"body\":{\"error\":{\"message\":");
        push_json_string(&mut r, &why.message);
        r.push_str(&format!(",\"type\":\"{kind}\",\"param\":"));
        match why.param {
            Some(p) => push_json_string(&mut r, p),
            None => r.push_str("null"),
        }
        r.push_str(",\"code\":null}}}");
        self.responses.push(Some(r));
        self.errors.push(None);
        self.failed += 1;
    }

    /// Row `i` answered by a server: its status and its body, JSON text
    /// on one line.
    pub fn forwarded(&mut self, batch: &RequestBatch, i: usize, status: u16, body: &str) {
        let request_id = self.start(batch, i);
        let mut r = format!("{{\"status_code\":{status},\"request_id\":");
        push_json_string(&mut r, &request_id);
        r.push_str(",\"body\":");
        r.push_str(body);
        r.push('}');
        self.responses.push(Some(r));
        self.errors.push(None);
        if status != 200 {
            self.failed += 1;
        }
    }

    /// Row `i` failed on the way to the server or back (`status`: 502
    /// for a response that is not JSON or too long).
    pub fn failed_upstream(
        &mut self,
        batch: &RequestBatch,
        i: usize,
        status: u16,
        message: String,
    ) {
        let why = Refusal {
            message,
            param: None,
        };
        self.error_response(batch, i, status, "server_error", &why);
    }

    /// Row `i`'s line is not a request (`problem` says why): no response,
    /// an error object with the line.
    pub fn unreadable(&mut self, batch: &RequestBatch, i: usize, problem: &str) {
        self.start(batch, i);
        let mut e = String::from("{\"code\":\"invalid_json_line\",\"message\":");
        push_json_string(&mut e, problem);
        e.push_str(&format!(",\"line\":{}}}", batch.line(i)));
        self.responses.push(None);
        self.errors.push(Some(e));
        self.failed += 1;
    }

    /// The [`columns`], one row per line answered.
    pub fn finish(self) -> Vec<ArrayRef> {
        vec![
            Arc::new(StringArray::from(self.ids)),
            Arc::new(StringArray::from(self.custom_ids)),
            Arc::new(StringArray::from(self.responses)),
            Arc::new(StringArray::from(self.errors)),
        ]
    }
}
