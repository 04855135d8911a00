//! Shared by tests/openai.rs and tests/openai_http.rs: the model, the
//! tests' Python environment, and an OpenAI Batch request file with every
//! kind of line.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{json, Value};

use super::{output_bytes, stook_bin};

pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn model_dir() -> PathBuf {
    let dir = root().join("models/all-MiniLM-L6-v2");
    assert!(
        dir.join("model.safetensors").is_file(),
        "{} is missing: run scripts/fetch-model.sh (scripts/test.sh does)",
        dir.display()
    );
    dir
}

/// .venv-arrow's python, with pyarrow, openai and the test server's
/// numpy, tokenizers and safetensors (made here when missing; a test that
/// cannot have it fails, saying why).
pub fn python() -> PathBuf {
    let py = root().join(".venv-arrow/bin/python");
    let ready = || {
        Command::new(&py)
            .args([
                "-c",
                "import openai, pyarrow, numpy, tokenizers, safetensors, pandas, sheaf.api.union, moto.server",
            ])
            .status()
            .is_ok_and(|s| s.success())
    };
    if !ready() {
        let s = Command::new(root().join("scripts/pyarrow-env.sh"))
            .status()
            .expect("running scripts/pyarrow-env.sh");
        assert!(
            s.success() && ready(),
            "pyarrow, openai, numpy, tokenizers, safetensors, pandas, sheaf-serve and moto are needed for this test and \
             scripts/pyarrow-env.sh could not install them (it runs `pip install` from PyPI)"
        );
    }
    py
}

pub fn stook(args: &[&str]) -> Output {
    Command::new(stook_bin()).args(args).output().unwrap()
}

pub fn embeddings(custom_id: &str, body: Value) -> String {
    let line =
        json!({"custom_id": custom_id, "method": "POST", "url": "/v1/embeddings", "body": body});
    line.to_string()
}

/// The fixture's sentences (`{"id", "text"}`) but the empty one, which
/// OpenAI refuses (tested apart).
pub fn sentences() -> Vec<Value> {
    std::fs::read_to_string(root().join("tests/fixtures/sentences.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|s| s["text"] != "")
        .collect()
}

/// The requests: the fixture's sentences, one to three a request, as a
/// string or a list, float or base64 (each base64 request's texts asked
/// again as floats); and between them, lines each answered with an error.
pub fn requests(dir: &Path) -> PathBuf {
    let sentences = sentences();
    let refused = |id: &str, param: Value, says: &str, line: Value| {
        let mut v: Value = serde_json::from_str(&line.to_string()).unwrap();
        v["custom_id"] = id.into();
        v["expect"] = json!({"status": 400, "param": param, "says": says});
        v.to_string()
    };
    let ok = |body: Value| json!({"method": "POST", "url": "/v1/embeddings", "body": body});
    let specials = [
        refused(
            "x-url",
            Value::Null,
            "url \"/v1/chat/completions\" is not served by this backend",
            json!({"method": "POST", "url": "/v1/chat/completions", "body": {"model": "m", "messages": [{"role": "user", "content": "hello"}]}}),
        ),
        "{\"custom_id\": \"x-cut\", \"method\": \"POST\", \"url\": \"/v1/embeddings\", \"body\": {\"in"
            .to_string(),
        refused(
            "x-get",
            Value::Null,
            "method \"GET\" is not supported",
            json!({"method": "GET", "url": "/v1/embeddings", "body": {"model": "m", "input": "a"}}),
        ),
        "[\"not\", \"an object\"]".to_string(),
        refused("x-tokens", "input".into(), "token ids", ok(json!({"model": "m", "input": [1, 2]}))),
        refused(
            "x-dims",
            "dimensions".into(),
            "gives 384 dimensions",
            ok(json!({"model": "m", "input": "a", "dimensions": 128})),
        ),
        refused("x-model", "model".into(), "provide a model", ok(json!({"input": "a"}))),
        refused("x-empty", "input".into(), "input[1] is an empty string", ok(json!({"model": "m", "input": ["a", ""]}))),
        refused(
            "x-format",
            "encoding_format".into(),
            "encoding_format \"int8\" is not supported",
            ok(json!({"model": "m", "input": "a", "encoding_format": "int8"})),
        ),
        "{\"method\": \"POST\", \"url\": \"/v1/embeddings\", \"body\": {\"model\": \"m\", \"input\": \"no id\"}}"
            .to_string(),
        "{\"custom_id\": \"x-bytes\", \"body\": \"\u{FFFD}\"}".replace('\u{FFFD}', "\u{1}"),
    ];
    let mut lines = Vec::new();
    let (mut next, mut r) = (0usize, 0usize);
    while next < sentences.len() {
        let n = [1, 3, 2][r % 3].min(sentences.len() - next);
        let group = &sentences[next..next + n];
        next += n;
        let ids: Vec<String> = group.iter().map(|s| s["id"].to_string()).collect();
        let texts: Vec<&str> = group.iter().map(|s| s["text"].as_str().unwrap()).collect();
        let input = if n == 1 && r % 2 == 0 {
            json!(texts[0])
        } else {
            json!(texts)
        };
        let id = format!("s-{}", ids.join("-"));
        let model = "all-MiniLM-L6-v2 ✓";
        if r % 4 == 1 {
            let body = json!({"model": model, "input": input, "encoding_format": "base64", "user": "u", "unknown": [1]});
            lines.push(embeddings(&id, body));
            lines.push(embeddings(
                &format!("f{r}"),
                json!({"model": model, "input": input}),
            ));
        } else {
            let body = json!({"model": model, "input": input, "encoding_format": "float", "dimensions": 384});
            lines.push(embeddings(&id, body));
        }
        if let Some(s) = specials.get(r) {
            lines.push(s.clone());
            lines.push(String::new());
        }
        r += 1;
    }
    let mut tokens = json!({"method": "POST", "url": "/v1/embeddings", "body": {"model": "m", "input": "The quick brown fox"}});
    tokens["custom_id"] = "x-fox".into();
    tokens["expect"] = json!({"tokens": 6});
    lines.push(tokens.to_string());
    let mut long = json!({"method": "POST", "url": "/v1/embeddings", "body": {"model": "m", "input": "word ".repeat(600)}});
    long["custom_id"] = "x-long".into();
    long["expect"] = json!({"tokens": 256});
    lines.push(long.to_string());
    let mut bytes = (lines.join("\n") + "\n").into_bytes();
    bytes.extend_from_slice(b"{\"custom_id\": \"x-utf8\", \"body\": \"\xff\"}\n");
    let path = dir.join("requests.jsonl");
    std::fs::write(&path, bytes).unwrap();
    path
}

/// The part files of `dir`, concatenated.
pub fn output(dir: &Path) -> Vec<u8> {
    output_bytes(dir)
}

/// Runs tests/openai_check.py over `output` (the answers to `requests`)
/// with `args` after them, asserting it passes; its summary.
pub fn check(requests: &Path, output: &Path, args: &[&str]) -> Value {
    let o = Command::new(python())
        .arg(root().join("tests/openai_check.py"))
        .arg(requests)
        .arg(output)
        .arg(root().join("tests/fixtures/minilm-reference.jsonl"))
        .args(args)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "openai_check.py: {said}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    eprintln!("openai_check.py {args:?}: {said}");
    serde_json::from_str(said.trim()).unwrap()
}
