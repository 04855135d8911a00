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
fn embeddings_are_byte_identical_across_compute_modes_actor_counts_and_runs() {
    // For a given config (the batch size decides each forward pass's
    // padding, so it is part of the config's fingerprint).
    let dir = tempdir();
    let input = fixture("sentences.jsonl");
    let mut outputs = Vec::new();
    for (name, compute, actors) in [
        ("a", Compute::Actors, 1),
        ("b", Compute::Tasks, 2),
        ("c", Compute::Actors, 2),
    ] {
        let out = dir.path().join(name);
        run(embedding_config(&input, &out, 64, compute, actors)).unwrap();
        outputs.push(output_bytes(&out));
    }
    assert!(
        outputs.iter().all(|o| *o == outputs[0]),
        "outputs differ between compute modes or actor counts"
    );
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
