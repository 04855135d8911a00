//! Every input format against every output format, on the same 100,000
//! rows, with pyarrow on the other side: files pyarrow writes are read,
//! files stook writes are read by pyarrow with the expected schema, and
//! every pairing gives the same results.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

const ROWS: usize = 100_000;

/// .venv-arrow's python (scripts/pyarrow-env.sh makes it; run here if it
/// is missing). A test that needs pyarrow and cannot have it fails, saying
/// why; it is never skipped.
fn python() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let py = root.join(".venv-arrow/bin/python");
    if !py.exists() {
        let s = Command::new(root.join("scripts/pyarrow-env.sh"))
            .status()
            .expect("running scripts/pyarrow-env.sh");
        assert!(
            s.success() && py.exists(),
            "pyarrow is needed for this test and scripts/pyarrow-env.sh could not install it \
             (it runs `pip install pyarrow` from PyPI)"
        );
    }
    py
}

fn script(args: &[&str]) -> Vec<u8> {
    let o = Command::new(python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/formats.py"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "formats.py {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout
}

fn stook(args: &[&str]) -> std::process::Output {
    Command::new(stook_bin()).args(args).output().unwrap()
}

fn job(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(&p, body).unwrap();
    p
}

/// Runs echo over `d/input` into `d/out-{input}-{format}` (asserting it
/// succeeds) and returns that directory.
fn echo(d: &Path, input: &str, format: &str, batch: usize, shard_rows: usize) -> PathBuf {
    let out = d.join(format!("out-{input}-{format}"));
    let cfg = job(
        d,
        "echo",
        &format!(
            "[input]\npath = {:?}\n[output]\npath = {out:?}\nformat = {format:?}\n\
             [model]\nbackend = \"echo\"\n[batch]\nsize = {batch}\n\
             [checkpoint]\nshard_rows = {shard_rows}\n",
            d.join(input)
        ),
    );
    let o = stook(&["run", cfg.to_str().unwrap()]);
    assert!(
        o.status.success(),
        "{input} → {format}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

#[test]
fn every_input_format_to_every_output_format_gives_the_same_results() {
    let dir = tempdir();
    let d = dir.path();
    let s = d.to_str().unwrap();
    script(&["write", s, &ROWS.to_string()]);
    let want = std::fs::read(d.join("in.jsonl")).unwrap();
    let inputs = [
        "in.jsonl",
        "in.jsonl.gz",
        "in.jsonl.zst",
        "in.parquet",
        "parts",
        "in.arrow",
    ];
    for input in inputs {
        for format in ["jsonl", "parquet", "arrow"] {
            let out = echo(d, input, format, 1000, 30_000);
            let got = script(&["dump", out.to_str().unwrap(), format]);
            assert!(
                got == want,
                "{input} → {format}: results differ from the input rows ({} vs {} bytes)",
                got.len(),
                want.len()
            );
            // Four shards of 30 batches each: the parts follow the shards.
            let parts = std::fs::read_dir(&out)
                .unwrap()
                .filter(|e| {
                    let n = e.as_ref().unwrap().file_name();
                    let n = n.to_string_lossy();
                    n.starts_with("part-") && n.ends_with(&format!(".{format}"))
                })
                .count();
            assert_eq!(parts, 4, "{input} → {format}");
        }
    }
    // Resume over a table: a damaged committed part is redone, the other
    // shards' rows are read past, and the output is the same again.
    for input in ["in.parquet", "in.arrow", "in.jsonl.zst"] {
        let out = d.join(format!("out-{input}-parquet"));
        let part = out.join("part-00002.parquet");
        let mut bytes = std::fs::read(&part).unwrap();
        bytes[100] ^= 0xFF;
        std::fs::write(&part, bytes).unwrap();
        let cfg = job(
            d,
            "again",
            &format!(
                "[input]\npath = {:?}\n[output]\npath = {out:?}\nformat = \"parquet\"\n\
                 [model]\nbackend = \"echo\"\n[batch]\nsize = 1000\n\
                 [checkpoint]\nshard_rows = 30000\n",
                d.join(input)
            ),
        );
        let o = stook(&["run", cfg.to_str().unwrap()]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let report = std::fs::read_to_string(out.join("_report.json")).unwrap();
        assert!(
            report.contains("\"rows_this_run\": 30000"),
            "{input}: {report}"
        );
        assert!(
            script(&["dump", out.to_str().unwrap(), "parquet"]) == want,
            "{input}"
        );
    }
}

#[test]
fn bad_values_in_tables_and_streams_are_named_before_any_model_loads() {
    let dir = tempdir();
    let d = dir.path();
    script(&["bad", d.to_str().unwrap()]);
    let cases = [
        (
            "int.parquet",
            "int.parquet: column \"text\" is of type Int64, and the backend expects a string there",
        ),
        (
            "nocol.parquet",
            "nocol.parquet: no column \"text\", which the backend requires (a string); the file has \"body\": Utf8",
        ),
        (
            "null.parquet",
            "null.parquet: row 8 (row group 1, row 4 in it): column \"text\": null, expected a string (required)",
        ),
        (
            "null.arrow",
            "null.arrow: row 8: column \"text\": null, expected a string (required)",
        ),
        ("stream.arrow", "stream.arrow: not an Arrow IPC file"),
        (
            "trunc.jsonl.gz",
            "trunc.jsonl.gz: not readable as gzip at line",
        ),
        ("plain.jsonl.gz", "plain.jsonl.gz: not readable as gzip at line 1"),
    ];
    for (input, want) in cases {
        let cfg = job(
            d,
            "bad",
            &format!(
                "[input]\npath = {:?}\n[output]\npath = {:?}\n[model]\nbackend = \"synthetic\"\n",
                d.join(input),
                d.join("out")
            ),
        );
        for cmd in ["validate", "run"] {
            let o = stook(&[cmd, cfg.to_str().unwrap()]);
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(!o.status.success(), "{cmd} {input}: accepted");
            assert!(err.contains(want), "{cmd} {input}: {err}");
            assert!(!err.contains("panicked"), "{cmd} {input}: {err}");
        }
    }
    // A bad input.format names the key and the choices.
    let cfg = job(
        d,
        "fmt",
        "[input]\npath = \"x\"\nformat = \"csv\"\n[output]\npath = \"o\"\n[model]\nbackend = \"echo\"\n",
    );
    let err =
        String::from_utf8_lossy(&stook(&["validate", cfg.to_str().unwrap()]).stderr).to_string();
    assert!(
        err.contains("input.format") && err.contains("jsonl, jsonl.gz, jsonl.zst, parquet, arrow"),
        "{err}"
    );
}

#[test]
fn embeddings_are_fixed_size_lists_of_f32_equal_to_the_json_output() {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/all-MiniLM-L6-v2");
    assert!(
        model.join("model.safetensors").exists(),
        "the model is missing: run scripts/fetch-model.sh (scripts/test.sh does)"
    );
    let dir = tempdir();
    let d = dir.path();
    // pyarrow writes the input: 300 texts, string ids.
    let input = d.join("texts.parquet");
    let code = format!(
        "import pyarrow as pa, pyarrow.parquet as pq\n\
         t = ['sentence %d about %s' % (i, 'cats ' * (i % 9)) for i in range(300)]\n\
         s = [i / 2 for i in range(300)]\n\
         pq.write_table(pa.table({{'id': ['r%d' % i for i in range(300)], 'text': t, 'score': s}}), {:?}, row_group_size=128)\n",
        input.to_str().unwrap()
    );
    let o = Command::new(python()).args(["-c", &code]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut outs = Vec::new();
    for format in ["jsonl", "parquet", "arrow"] {
        let out = d.join(format!("emb-{format}"));
        let cfg = job(
            d,
            "emb",
            &format!(
                "[input]\npath = {input:?}\n[output]\npath = {out:?}\nformat = {format:?}\n\
                 [model]\nbackend = \"embedding\"\n[model.options]\npath = {model:?}\n\
                 [batch]\nsize = 64\n[checkpoint]\nshard_rows = 128\n"
            ),
        );
        let o = stook(&["run", cfg.to_str().unwrap()]);
        assert!(
            o.status.success(),
            "{format}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        outs.push(out.to_str().unwrap().to_string());
    }
    let said = script(&["embeddings", &outs[0], &outs[1], &outs[2]]);
    assert!(
        String::from_utf8_lossy(&said).contains("embeddings agree: 300 rows"),
        "{}",
        String::from_utf8_lossy(&said)
    );

    // Passthrough: a float column copied with its type, ahead of the
    // backend's keys; a key the backend writes itself is refused.
    for (format, pass) in [("parquet", "[\"score\"]"), ("jsonl", "[\"score\"]")] {
        let out = d.join(format!("pass-{format}"));
        let cfg = job(
            d,
            "pass",
            &format!(
                "[input]\npath = {input:?}\n[output]\npath = {out:?}\nformat = {format:?}\n\
                 passthrough = {pass}\n[model]\nbackend = \"embedding\"\n\
                 [model.options]\npath = {model:?}\n[batch]\nsize = 64\n"
            ),
        );
        let o = stook(&["run", cfg.to_str().unwrap()]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        script(&["passthrough", out.to_str().unwrap(), format]);
    }
    let cfg = job(
        d,
        "pass-id",
        &format!(
            "[input]\npath = {input:?}\n[output]\npath = \"x\"\npassthrough = [\"id\"]\n\
             [model]\nbackend = \"embedding\"\n[model.options]\npath = {model:?}\n"
        ),
    );
    let err =
        String::from_utf8_lossy(&stook(&["validate", cfg.to_str().unwrap()]).stderr).to_string();
    assert!(
        err.contains(
            "output.passthrough: \"id\" is a key of the embedding backend's results already"
        ),
        "{err}"
    );
}

#[test]
fn a_table_through_echo_to_parquet_and_arrow_is_the_same_table_typed() {
    let dir = tempdir();
    let d = dir.path();
    script(&["mixed", d.to_str().unwrap()]);
    for input in ["mixed.parquet", "mixed.arrow"] {
        for format in ["parquet", "arrow"] {
            let out = echo(d, input, format, 256, 1000);
            let rows = script(&[
                "same",
                d.join(input).to_str().unwrap(),
                out.to_str().unwrap(),
                format,
            ]);
            assert_eq!(
                String::from_utf8_lossy(&rows).trim(),
                "3000",
                "{input} → {format}"
            );
        }
    }
    // The same rows as JSON Lines: what pyarrow's JSON of each row says.
    let out = d.join("out-jsonl");
    let cfg = job(
        d,
        "mixed-jsonl",
        &format!(
            "[input]\npath = {:?}\n[output]\npath = {out:?}\n[model]\nbackend = \"echo\"\n",
            d.join("mixed.parquet")
        ),
    );
    let o = stook(&["run", cfg.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8(script(&["dump", out.to_str().unwrap(), "jsonl"])).unwrap();
    let first: serde_json::Value = serde_json::from_str(text.lines().nth(1).unwrap()).unwrap();
    assert_eq!(first["id"], 1);
    assert_eq!(first["n32"], 3);
    assert_eq!(first["tags"], serde_json::json!(["x"]));
    assert_eq!(text.lines().count(), 3000);
}
