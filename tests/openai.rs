//! The OpenAI Batch API's file format (`schema = "openai"` of the embedding
//! backend), through `stook run`, checked by tests/openai_check.py with the
//! official `openai` package's types and sentence-transformers' reference
//! vectors. Needs models/all-MiniLM-L6-v2 (scripts/fetch-model.sh) and
//! .venv-arrow (scripts/pyarrow-env.sh: pyarrow and openai from PyPI); the
//! tests fail, saying so, without them.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use serde_json::{json, Value};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn model_dir() -> PathBuf {
    let dir = root().join("models/all-MiniLM-L6-v2");
    assert!(
        dir.join("model.safetensors").is_file(),
        "{} is missing: run scripts/fetch-model.sh (scripts/test.sh does)",
        dir.display()
    );
    dir
}

/// .venv-arrow's python, with pyarrow and openai (made here when missing;
/// a test that cannot have it fails, saying why).
fn python() -> PathBuf {
    let py = root().join(".venv-arrow/bin/python");
    let ready = || {
        Command::new(&py)
            .args(["-c", "import openai, pyarrow"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if !ready() {
        let s = Command::new(root().join("scripts/pyarrow-env.sh"))
            .status()
            .expect("running scripts/pyarrow-env.sh");
        assert!(
            s.success() && ready(),
            "the openai package is needed for this test and scripts/pyarrow-env.sh could not \
             install it (it runs `pip install pyarrow openai` from PyPI)"
        );
    }
    py
}

fn stook(args: &[&str]) -> Output {
    Command::new(stook_bin()).args(args).output().unwrap()
}

/// A job of the embedding backend in the openai schema over `input`.
fn job(dir: &Path, input: &Path, out: &str) -> PathBuf {
    let cfg = dir.join(format!("{out}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "[input]\npath = {input:?}\n[output]\npath = {:?}\n[model]\nbackend = \"embedding\"\n\
             [model.options]\npath = {:?}\nschema = \"openai\"\n[batch]\nsize = 16\nnum_actors = 2\n",
            dir.join(out),
            model_dir()
        ),
    )
    .unwrap();
    cfg
}

fn embeddings(custom_id: &str, body: Value) -> String {
    let line =
        json!({"custom_id": custom_id, "method": "POST", "url": "/v1/embeddings", "body": body});
    line.to_string()
}

/// The requests: the fixture's sentences, one to three a request, as a
/// string or a list, float or base64 (each base64 request's texts asked
/// again as floats); and between them, lines each answered with an error.
fn requests(dir: &Path) -> PathBuf {
    let sentences: Vec<Value> =
        std::fs::read_to_string(root().join("tests/fixtures/sentences.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            // OpenAI refuses an empty text (tested below).
            .filter(|s| s["text"] != "")
            .collect();
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
            json!({"method": "POST", "url": "/v1/chat/completions", "body": {"model": "m", "messages": []}}),
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
fn output(dir: &Path) -> Vec<u8> {
    output_bytes(dir)
}

#[test]
fn every_line_is_answered_in_openais_format_and_reruns_write_the_same_bytes() {
    let dir = tempdir();
    let input = requests(dir.path());
    let o = stook(&["run", job(dir.path(), &input, "o").to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    // The summary counts the lines answered with an error.
    assert!(err.contains(", 12 error lines"), "{err}");
    let report: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("o/_report.json")).unwrap()).unwrap();
    assert_eq!(report["counters"]["error_lines"], 12, "{report}");
    assert!(
        report["counters"]["texts_truncated"].as_u64() >= Some(1),
        "{report}"
    );
    assert_eq!(report["errors"], 0, "{report}");

    let part = dir.path().join("o/part-00000.jsonl");
    let check = Command::new(python())
        .arg(root().join("tests/openai_check.py"))
        .arg(&input)
        .arg(&part)
        .arg(root().join("tests/fixtures/minilm-reference.jsonl"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&check.stderr)
    );
    eprintln!("openai_check.py: {said}");
    let summary: Value = serde_json::from_str(said.trim()).unwrap();
    assert_eq!(summary["refused"], 7, "{summary}");
    assert_eq!(summary["unreadable"], 5, "{summary}");
    assert!(summary["base64"].as_u64().unwrap() >= 20, "{summary}");
    assert!(
        summary["lowest_cosine"].as_f64().unwrap() >= 0.9999,
        "{summary}"
    );

    // Ids depend on the input's content and the row only.
    let again = stook(&["run", job(dir.path(), &input, "again").to_str().unwrap()]);
    assert!(again.status.success());
    assert_eq!(
        output(&dir.path().join("again")),
        output(&dir.path().join("o"))
    );
}

#[test]
fn a_repeated_custom_id_is_refused_before_the_run_naming_both_lines() {
    let dir = tempdir();
    let line = |id: &str| embeddings(id, json!({"model": "m", "input": "a"}));
    let input = dir.path().join("dup.jsonl");
    let lines = [
        line("a"),
        line("b"),
        String::new(),
        "not json".into(),
        line("a"),
        line("c"),
        line("b"),
    ];
    std::fs::write(&input, lines.join("\n")).unwrap();
    for on_error in ["fail", "skip"] {
        let cfg = job(dir.path(), &input, "dup");
        let text = std::fs::read_to_string(&cfg).unwrap();
        std::fs::write(&cfg, format!("{text}on_error = {on_error:?}\n")).unwrap();
        let o = stook(&["run", cfg.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(3), "{err}");
        assert!(
            err.contains("dup.jsonl:5: \"custom_id\" \"a\" is already on line 1"),
            "{err}"
        );
        assert!(
            err.contains("dup.jsonl:7: \"custom_id\" \"b\" is already on line 2"),
            "{err}"
        );
        assert!(err.contains("2 bad rows: fix the input"), "{err}");
        assert!(!dir.path().join("dup").exists(), "nothing runs");
    }
    let o = stook(&["validate", job(dir.path(), &input, "dup").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(3));
}

#[test]
fn a_table_input_is_refused_for_the_openai_schema() {
    let dir = tempdir();
    let table = dir.path().join("t.parquet");
    let made = Command::new(python())
        .args([
            "-c",
            "import sys, pyarrow as pa, pyarrow.parquet as pq\n\
             pq.write_table(pa.table({'custom_id': ['a'], 'body': ['{}']}), sys.argv[1])",
        ])
        .arg(&table)
        .status()
        .unwrap();
    assert!(made.success());
    let o = stook(&["run", job(dir.path(), &table, "t").to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("input.path") && err.contains("reads JSON Lines"),
        "{err}"
    );
}
