//! The OpenAI Batch API's file format (`schema = "openai"` of the embedding
//! backend), through `stook run`, checked by tests/openai_check.py with the
//! official `openai` package's types and sentence-transformers' reference
//! vectors. Needs models/all-MiniLM-L6-v2 (scripts/fetch-model.sh) and
//! .venv-arrow (scripts/pyarrow-env.sh: pyarrow and openai from PyPI); the
//! tests fail, saying so, without them.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::openai::*;
use common::*;
use serde_json::{json, Value};

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
    let summary = check(&input, &part, &[]);
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
