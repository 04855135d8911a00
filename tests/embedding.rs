//! The embedding backend through the whole pipeline (`stook run`), against
//! reference vectors computed by sentence-transformers
//! (scripts/reference-embeddings.py). Needs models/all-MiniLM-L6-v2, which
//! scripts/test.sh fetches (scripts/fetch-model.sh); without it these tests
//! fail, saying so.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use stook::config::Compute;

fn model_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/all-MiniLM-L6-v2");
    assert!(
        dir.join("model.safetensors").is_file(),
        "{} is missing: run scripts/fetch-model.sh (scripts/test.sh does)",
        dir.display()
    );
    dir
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn embedding_config(
    input: &Path,
    out: &Path,
    size: usize,
    compute: Compute,
    actors: usize,
) -> stook::JobConfig {
    let mut c = synthetic_config(input, out, "");
    c.model.backend = "embedding".into();
    c.model.options = toml::from_str(&format!("path = {:?}", model_dir())).unwrap();
    with_batching(c, size, compute, actors, 256 << 20)
}

fn vectors(bytes: &[u8]) -> Vec<(u64, Vec<f64>)> {
    String::from_utf8(bytes.to_vec())
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let e = v["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect();
            (v["id"].as_u64().unwrap(), e)
        })
        .collect()
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (na * nb)
}

#[test]
fn embeddings_agree_with_sentence_transformers_through_the_pipeline() {
    let dir = tempdir();
    let out = dir.path().join("o");
    let r = run(embedding_config(
        &fixture("sentences.jsonl"),
        &out,
        64,
        Compute::Actors,
        1,
    ))
    .unwrap();
    assert_eq!(r.rows_written, 210);
    // The fixture's one text longer than max_seq_length (256 tokens) is
    // truncated, and counted in the report.
    assert_eq!(
        r.counters.get("texts_truncated"),
        Some(&1),
        "{:?}",
        r.counters
    );
    let got = vectors(&output_bytes(&out));
    let want = vectors(&std::fs::read(fixture("minilm-reference.jsonl")).unwrap());
    assert_eq!(got.len(), want.len());
    let mut worst = (1.0f64, 0u64);
    for ((gi, g), (wi, w)) in got.iter().zip(&want) {
        assert_eq!(gi, wi);
        assert_eq!(g.len(), 384);
        let c = cosine(g, w);
        if c < worst.0 {
            worst = (c, *gi);
        }
    }
    eprintln!("lowest cosine {:.7} (row {})", worst.0, worst.1);
    assert!(
        worst.0 >= 0.9999,
        "row {} has cosine {} to sentence-transformers",
        worst.1,
        worst.0
    );
}

#[test]
fn half_precision_packed_and_padded_passes_agree_with_sentence_transformers() {
    // In f16 and bf16 the model runs on candle's encoder, as on a GPU:
    // packed passes (stook's attention and pooling ops; their CUDA kernels
    // are checked in tests/cuda_kernels.rs) and padded ones (candle's
    // batched products under a mask) must both give the reference vectors.
    let dir = tempdir();
    let want = vectors(&std::fs::read(fixture("minilm-reference.jsonl")).unwrap());
    let mut outputs = Vec::new();
    for (dtype, attention, bound) in [
        ("f16", "packed", 0.9999),
        ("f16", "padded", 0.9999),
        ("bf16", "packed", 0.999),
    ] {
        let out = dir.path().join(format!("{dtype}-{attention}"));
        let mut c = embedding_config(&fixture("sentences.jsonl"), &out, 64, Compute::Actors, 1);
        let more: toml::Table =
            toml::from_str(&format!("dtype = {dtype:?}\nattention = {attention:?}")).unwrap();
        c.model.options.extend(more);
        run(c).unwrap();
        let got = vectors(&output_bytes(&out));
        assert_eq!(got.len(), want.len());
        let worst = got
            .iter()
            .zip(&want)
            .map(|((gi, g), (wi, w))| {
                assert_eq!(gi, wi);
                assert!(g.iter().all(|x| x.is_finite()), "row {gi}: not finite");
                (cosine(g, w), *gi)
            })
            .fold((1.0f64, 0u64), |a, b| if b.0 < a.0 { b } else { a });
        eprintln!(
            "{dtype} {attention}: lowest cosine {:.7} (row {})",
            worst.0, worst.1
        );
        assert!(
            worst.0 >= bound,
            "{dtype} {attention}: row {} has cosine {} to sentence-transformers",
            worst.1,
            worst.0
        );
        outputs.push(output_bytes(&out));
    }
    // The packed run really ran packed passes: a model whose packed ops
    // disagree with padded ones at load falls back to padded passes, and
    // the two would then write the same bytes.
    assert!(
        outputs[0] != outputs[1],
        "f16 packed and padded runs wrote the same bytes"
    );
}

#[test]
fn embeddings_are_byte_identical_across_batching_threads_compute_modes_and_actor_counts() {
    // On the CPU a text's vector depends on its own tokens only: not on
    // the batch, the pass it shares, the thread count or the actor count.
    let dir = tempdir();
    let input = fixture("sentences.jsonl");
    let mut outputs = Vec::new();
    for (name, size, compute, actors, extra) in [
        ("a", 64, Compute::Actors, 1, ""),
        ("b", 64, Compute::Tasks, 2, ""),
        ("c", 64, Compute::Actors, 2, "threads = 1"),
        ("d", 7, Compute::Actors, 1, "micro_batch = 3\nthreads = 2"),
        ("e", 256, Compute::Actors, 1, "micro_batch_tokens = 300"),
    ] {
        let out = dir.path().join(name);
        let mut c = embedding_config(&input, &out, size, compute, actors);
        let more: toml::Table = toml::from_str(extra).unwrap();
        c.model.options.extend(more);
        run(c).unwrap();
        outputs.push(output_bytes(&out));
    }
    for (o, name) in outputs.iter().zip(["a", "b", "c", "d", "e"]) {
        assert!(
            *o == outputs[0],
            "run {name}'s output differs from run a's (batching, threads or actors changed a vector)"
        );
    }
}

#[test]
fn a_folder_missing_files_is_named_before_any_model_loads() {
    let dir = tempdir();
    let input = write_rows(dir.path(), "in.jsonl", 3);
    let mut c = embedding_config(&input, &dir.path().join("o"), 8, Compute::Actors, 1);
    let empty = dir.path().join("not-a-model");
    std::fs::create_dir_all(&empty).unwrap();
    c.model.options = toml::from_str(&format!("path = {empty:?}")).unwrap();
    let e = run(c).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("not-a-model/config.json: No such file"), "{e}");
}

/// sheaf-serve EmbeddingRequest lines over the fixture's sentences: 0 to 3
/// texts a request; some with a request_id, some without, some with
/// normalize null; a non-ASCII model name and unknown keys.
fn sheaf_requests(dir: &Path) -> (PathBuf, Vec<Vec<u64>>) {
    let sentences: Vec<serde_json::Value> = std::fs::read_to_string(fixture("sentences.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let (mut lines, mut ids, mut next) = (String::new(), Vec::new(), 0usize);
    for r in 0.. {
        let n = [1, 3, 0, 2][r % 4].min(sentences.len() - next);
        if next == sentences.len() {
            break;
        }
        let group: Vec<&serde_json::Value> = sentences[next..next + n].iter().collect();
        ids.push(group.iter().map(|s| s["id"].as_u64().unwrap()).collect());
        next += n;
        let texts: Vec<&str> = group.iter().map(|s| s["text"].as_str().unwrap()).collect();
        let mut req = serde_json::json!({
            "model_type": "embedding",
            "model_name": "mini-lm ✓ \"m\"",
            "texts": texts,
            "extra": {"ignored": [1, 2]},
        });
        match r % 3 {
            0 => req["request_id"] = format!("req-{r}").into(),
            1 => req["normalize"] = serde_json::Value::Null,
            _ => req["normalize"] = true.into(),
        }
        lines.push_str(&serde_json::to_string(&req).unwrap());
        lines.push('\n');
    }
    let path = dir.join("sheaf.jsonl");
    std::fs::write(&path, lines).unwrap();
    (path, ids)
}

fn sheaf_config(input: &Path, out: &Path) -> stook::JobConfig {
    let mut c = embedding_config(input, out, 16, Compute::Actors, 1);
    c.model.options =
        toml::from_str(&format!("path = {:?}\nschema = \"sheaf\"", model_dir())).unwrap();
    c
}

#[test]
fn sheaf_requests_get_sheaf_responses_byte_for_byte() {
    let dir = tempdir();
    let (input, ids) = sheaf_requests(dir.path());
    let out = dir.path().join("o");
    let r = run(sheaf_config(&input, &out)).unwrap();
    assert_eq!(r.rows_written as usize, ids.len());
    let bytes = output_bytes(&out);
    let text = String::from_utf8(bytes.clone()).unwrap();

    // Python's json.dumps writes each line exactly as it is (key order,
    // separators, \u escapes, float reprs): re-dumping changes nothing.
    let redump = std::process::Command::new("python3")
        .args([
            "-c",
            "import json,sys\nfor l in open(sys.argv[1], encoding='utf-8'):\n    l = l.rstrip('\\n')\n    d = json.dumps(json.loads(l))\n    i = next((k for k in range(min(len(d), len(l))) if d[k] != l[k]), min(len(d), len(l)))\n    assert d == l, ('json.dumps', d[i-60:i+60], 'stook', l[i-60:i+60])\nprint('ok')",
        ])
        .arg(out.join("part-00000.jsonl"))
        .output()
        .expect("python3 is needed to check sheaf's format (scripts/test.sh runs where it is)");
    assert!(
        redump.status.success(),
        "{}",
        String::from_utf8_lossy(&redump.stderr)
    );

    let want: std::collections::HashMap<u64, Vec<f64>> =
        vectors(&std::fs::read(fixture("minilm-reference.jsonl")).unwrap())
            .into_iter()
            .collect();
    let mut worst = 1.0f64;
    for (r, (line, ids)) in text.lines().zip(&ids).enumerate() {
        assert!(line.starts_with("{\"request_id\": \""), "{line:.80}");
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["model_type"], "embedding");
        assert_eq!(v["model_name"], "mini-lm ✓ \"m\"");
        assert!(
            line.contains("\"model_name\": \"mini-lm \\u2713 \\\"m\\\"\""),
            "{line:.120}"
        );
        assert_eq!(v["metadata"], serde_json::json!({}));
        assert_eq!(v["dim"], 384);
        let id = v["request_id"].as_str().unwrap();
        if r % 3 == 0 {
            assert_eq!(id, format!("req-{r}"));
        } else {
            assert_eq!(id.len(), 36, "{id}");
        }
        let embs = v["embeddings"].as_array().unwrap();
        assert_eq!(embs.len(), ids.len(), "request {r}");
        for (e, i) in embs.iter().zip(ids) {
            let g: Vec<f64> = e
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect();
            worst = worst.min(cosine(&g, &want[i]));
        }
    }
    eprintln!("sheaf: lowest cosine {worst:.7}");
    assert!(worst >= 0.9999, "lowest cosine {worst}");

    // Generated request ids depend on the input and the row only: a rerun
    // writes the same bytes.
    let again = dir.path().join("o2");
    run(sheaf_config(&input, &again)).unwrap();
    assert_eq!(output_bytes(&again), bytes);
}

/// The room reserved for a batch's responses counts on every row's `"`s:
/// skipped bad rows with none, in the same batch as a request of many
/// texts, must not shrink it (they once did: "object larger than its
/// reservation").
#[test]
fn sheaf_room_holds_when_bad_rows_share_the_batch() {
    let dir = tempdir();
    let texts: Vec<String> = (0..300).map(|i| format!("t{i}")).collect();
    let mut lines = vec![
        serde_json::json!({"model_type": "embedding", "model_name": "m", "texts": texts})
            .to_string(),
    ];
    lines.extend(std::iter::repeat_n("x".to_string(), 63));
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let mut c = sheaf_config(&input, &dir.path().join("o"));
    c.batch.size = 64;
    c.batch.on_error = stook::config::OnError::Skip;
    let r = run(c).unwrap();
    assert_eq!((r.rows_written, r.errors), (1, 63));
    let out = String::from_utf8(output_bytes(&dir.path().join("o"))).unwrap();
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["embeddings"].as_array().unwrap().len(), 300);
}

#[test]
fn sheaf_requests_that_sheaf_would_misread_are_refused_with_line_and_field() {
    let dir = tempdir();
    let ok = r#"{"model_type": "embedding", "model_name": "m", "texts": ["a"]}"#;
    for (bad, want) in [
        (
            r#"{"model_type": "image", "model_name": "m", "texts": ["a"]}"#,
            r#"field "model_type": expected "embedding", found "image""#,
        ),
        (
            r#"{"model_type": "embedding", "model_name": "m", "texts": ["a"], "images_b64": ["AAAA"]}"#,
            r#"field "images_b64" is not accepted: image embeddings are not supported"#,
        ),
        (
            r#"{"model_type": "embedding", "model_name": "m", "texts": "a"}"#,
            r#"field "texts": invalid type: string "a", expected a sequence"#,
        ),
        (
            r#"{"model_type": "embedding", "texts": ["a"]}"#,
            r#"missing field "model_name" (expected a string)"#,
        ),
        (
            r#"{"model_type": "embedding", "model_name": "m", "texts": ["a"], "normalize": "yes"}"#,
            r#"field "normalize": invalid type: string "yes", expected a boolean"#,
        ),
    ] {
        let input = dir.path().join("in.jsonl");
        std::fs::write(&input, format!("{ok}\n\n{bad}\n{ok}\n")).unwrap();
        let e = run(sheaf_config(&input, &dir.path().join("o")))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("in.jsonl:3:"), "{e}");
        assert!(e.contains(want), "{e}");
    }
}

#[test]
fn the_stage_benchmark_times_tokenizer_forward_and_writer_apart() {
    let o = std::process::Command::new(stook_bin())
        .args(["bench", "stages", "--json", "--batch", "64", "--input"])
        .arg(fixture("sentences.jsonl"))
        .arg("--model")
        .arg(model_dir())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["texts"], 210);
    for k in ["load", "tokenize", "forward", "format"] {
        assert!(v[k].as_f64().unwrap() > 0.0, "{k}: {v}");
    }
    let o = std::process::Command::new(stook_bin())
        .args(["bench", "stages", "--device", "gpu", "--input"])
        .arg(fixture("sentences.jsonl"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--device: expected cpu or cuda:N"));
}

#[test]
fn sigkill_during_embedding_then_resume_gives_the_same_bytes() {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    let dir = tempdir();
    let input = fixture("sentences.jsonl");
    let job = |name: &str| {
        let out = dir.path().join(name);
        let cfg = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "[input]\npath = {input:?}\n[output]\npath = {out:?}\n\
                 [model]\nbackend = \"embedding\"\n[model.options]\npath = {:?}\n\
                 [batch]\nsize = 8\n[checkpoint]\nshard_rows = 16\n",
                model_dir()
            ),
        )
        .unwrap();
        (cfg, out)
    };
    let (cfg, reference_out) = job("reference");
    let o = Command::new(stook_bin())
        .args(["run", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let reference = output_bytes(&reference_out);

    // 14 shards of 16 rows: each round is killed once its run has
    // committed `grow` more of them (and a few ms more), mid-run.
    let (cfg, out) = job("killed");
    let committed = || {
        std::fs::read_to_string(out.join("_manifest.jsonl"))
            .map(|m| m.lines().filter(|l| l.contains("\"shard\"")).count())
            .unwrap_or(0)
    };
    let mut killed = 0;
    for (grow, extra_ms) in [(1, 0), (2, 7), (1, 3), (3, 0), (2, 11)] {
        let before = committed();
        let mut child = Command::new(stook_bin())
            .args(["run", cfg.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while committed() < before + grow
            && child.try_wait().unwrap().is_none()
            && start.elapsed() < Duration::from_secs(120)
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(extra_ms));
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        let o = child.wait_with_output().unwrap();
        match o.status.code() {
            None => killed += 1,
            Some(0) => {}
            Some(c) => panic!("exit {c}: {}", String::from_utf8_lossy(&o.stderr)),
        }
    }
    assert!(killed >= 3, "only {killed} of 5 runs were killed mid-run");
    let o = Command::new(stook_bin())
        .args(["run", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        output_bytes(&out) == reference,
        "resumed output differs from the uninterrupted run's"
    );
    assert!(out.join("_SUCCESS").exists());
}

#[test]
fn absurd_values_max_seq_length_zero_is_refused_with_every_other_problem() {
    let dir = tempdir();
    let input = write_rows(dir.path(), "in.jsonl", 3);
    let mut c = embedding_config(&input, &dir.path().join("o"), 16, Compute::Actors, 1);
    c.model.options = toml::from_str(&format!(
        "path = {:?}\nmax_seq_length = 0\nmicro_batch = 0",
        model_dir()
    ))
    .unwrap();
    match stook::Job::new(c, &stook::BackendRegistry::with_builtins(), "t".as_ref()) {
        Err(stook::RunError::Config(e)) => {
            let keys: Vec<&str> = e.problems.iter().map(|p| p.key.as_str()).collect();
            assert_eq!(
                keys,
                ["model.options.micro_batch", "model.options.max_seq_length"],
                "{e}"
            );
            assert!(
                e.to_string().contains("expected at least 1 token, found 0"),
                "{e}"
            );
        }
        Err(e) => panic!("expected a config error, got {e}"),
        Ok(_) => panic!("max_seq_length = 0 was accepted"),
    }
}

#[test]
fn resume_depends_on_what_changes_results_not_on_how_the_model_path_is_spelled_or_threads() {
    let dir = tempdir();
    let input = write_rows(dir.path(), "in.jsonl", 20);
    let out = dir.path().join("o");
    let c = embedding_config(&input, &out, 8, Compute::Actors, 1);
    let first = run(c).unwrap();
    assert_eq!(first.rows_this_run, 20);
    // The same folder spelled another way, and a thread count: the same
    // results, so the rerun resumes (nothing left to do).
    let spelled = model_dir().join("..").join("all-MiniLM-L6-v2");
    let mut c = embedding_config(&input, &out, 8, Compute::Actors, 1);
    c.model.options = toml::from_str(&format!("path = {spelled:?}\nthreads = 1")).unwrap();
    let again = run(c).unwrap();
    assert_eq!(again.rows_this_run, 0, "refused or redone");
    // A change that does change results is still refused.
    let mut c = embedding_config(&input, &out, 8, Compute::Actors, 1);
    c.model.options =
        toml::from_str(&format!("path = {:?}\nmax_seq_length = 16", model_dir())).unwrap();
    let e = run(c).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("the config changed (model.options"), "{e}");
}
