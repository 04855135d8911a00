//! End-to-end runs of the real Runner on real files: the order invariant
//! across every execution setting, load counts, the budget, and cleanup.

mod common;

use common::*;
use stook::config::Compute;
use stook::{BackendRegistry, Job, RunControl};

const ROWS: usize = 1_000;

#[test]
fn output_is_byte_identical_across_compute_actors_batch_sizes_and_budgets() {
    let dir = tempdir();
    let input = write_rows(dir.path(), "in.jsonl", ROWS);
    let opts = "output_bytes = 80";
    let reference = {
        let out = dir.path().join("ref");
        let c = with_batching(
            synthetic_config(&input, &out, opts),
            1,
            Compute::Actors,
            1,
            64 << 20,
        );
        run(c).unwrap();
        output_bytes(&out)
    };
    assert_synthetic_rows(&reference, ROWS);
    let mut n = 0;
    for compute in [Compute::Actors, Compute::Tasks] {
        for actors in 1..=4 {
            for size in [1usize, 7, 256] {
                // From about one batch's worth of store to plenty.
                for budget in [one_batch_budget(size), 64 << 20] {
                    let out = dir.path().join(format!("o{n}"));
                    n += 1;
                    let c = with_batching(
                        synthetic_config(&input, &out, opts),
                        size,
                        compute,
                        actors,
                        budget,
                    );
                    let r = run(c)
                        .unwrap_or_else(|e| panic!("{compute:?} {actors} {size} {budget}: {e}"));
                    assert!(
                        r.peak_store_bytes <= budget,
                        "peak {} > budget {budget}",
                        r.peak_store_bytes
                    );
                    assert_eq!(r.leaked_store_objects, 0);
                    assert_eq!(
                        output_bytes(&out),
                        reference,
                        "{compute:?} actors={actors} size={size} budget={budget}"
                    );
                    assert!(temporaries(&out).is_empty());
                }
            }
        }
    }
}

/// A budget that holds one batch of `size` rows of `write_rows` (input and
/// output) and little more.
fn one_batch_budget(size: usize) -> u64 {
    let per_row = 400u64;
    4096 + 2 * 2048 + size as u64 * per_row
}

#[test]
fn order_off_writes_the_same_rows_each_with_its_row_number() {
    let dir = tempdir();
    let input = write_rows(dir.path(), "in.jsonl", ROWS);
    let ordered = dir.path().join("ordered");
    run(with_batching(
        synthetic_config(&input, &ordered, "batch_ms = 1"),
        7,
        Compute::Actors,
        3,
        64 << 20,
    ))
    .unwrap();
    let expected: Vec<serde_json::Value> = String::from_utf8(output_bytes(&ordered))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let out = dir.path().join("unordered");
    let mut c = with_batching(
        synthetic_config(&input, &out, "batch_ms = 1"),
        7,
        Compute::Actors,
        3,
        64 << 20,
    );
    c.output.preserve_order = false;
    let r = run(c).unwrap();
    assert_eq!(r.rows_written, ROWS as u64);
    let mut seen = vec![false; ROWS];
    for line in String::from_utf8(output_bytes(&out)).unwrap().lines() {
        let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
        let row = v["_row"].as_u64().unwrap() as usize;
        assert!(!std::mem::replace(&mut seen[row], true), "row {row} twice");
        v.as_object_mut().unwrap().remove("_row");
        assert_eq!(v, expected[row], "row {row}");
    }
    assert!(seen.iter().all(|s| *s));
}

#[test]
fn the_model_loads_once_per_actor_or_once_in_tasks_mode() {
    let dir = tempdir();
    let input = write_rows(dir.path(), "in.jsonl", 300);
    for (compute, actors, loads) in [
        (Compute::Actors, 3, 3),
        (Compute::Actors, 1, 1),
        (Compute::Tasks, 3, 1),
    ] {
        let out = dir.path().join(format!("{compute:?}{actors}"));
        let c = with_batching(
            synthetic_config(&input, &out, "load_ms = 50"),
            16,
            compute,
            actors,
            64 << 20,
        );
        let r = run(c).unwrap();
        assert_eq!(r.model_loads, loads, "{compute:?} with {actors} actors");
    }
}

#[test]
fn shards_commit_as_numbered_parts_with_a_manifest() {
    let dir = tempdir();
    let input = write_rows(dir.path(), "in.jsonl", ROWS);
    let out = dir.path().join("o");
    let mut c = with_batching(
        synthetic_config(&input, &out, ""),
        50,
        Compute::Actors,
        2,
        64 << 20,
    );
    c.checkpoint.shard_rows = 300; // 6 batches of 50 a shard
    let r = run(c).unwrap();
    assert_eq!(
        r.parts,
        [
            "part-00000.jsonl",
            "part-00001.jsonl",
            "part-00002.jsonl",
            "part-00003.jsonl"
        ]
    );
    let manifest = std::fs::read_to_string(out.join("_manifest.jsonl")).unwrap();
    let rows: Vec<u64> = manifest
        .lines()
        .skip(1) // the header
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["rows"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(rows, [300, 300, 300, 100]);
    assert!(out.join("_SUCCESS").exists());
    assert!(out.join("_report.json").exists());
    assert_synthetic_rows(&output_bytes(&out), ROWS);
}

#[test]
fn a_row_that_keeps_failing_is_isolated_and_fails_the_run_naming_its_line() {
    let dir = tempdir();
    let input = write_rows(dir.path(), "in.jsonl", 100);
    let out = dir.path().join("o");
    let mut c = with_batching(
        synthetic_config(&input, &out, "fail_ids = [42]"),
        10,
        Compute::Actors,
        2,
        64 << 20,
    );
    c.checkpoint.shard_rows = 20;
    let e = run(c).unwrap_err().to_string();
    assert!(
        e.ends_with(
            "in.jsonl:43: the model fails on this row alone: synthetic failure for row id 42"
        ),
        "{e}"
    );
    assert!(temporaries(&out).is_empty());
    // Shards complete before the failure stay committed.
    assert!(out.join("part-00000.jsonl").exists());
    assert!(!out.join("_SUCCESS").exists());
}

#[test]
fn a_panicking_model_fails_its_batch_not_the_process() {
    let dir = tempdir();
    let input = write_rows(dir.path(), "in.jsonl", 100);
    let out = dir.path().join("o");
    let c = with_batching(
        synthetic_config(&input, &out, "panic_ids = [7]"),
        10,
        Compute::Tasks,
        2,
        64 << 20,
    );
    let e = run(c).unwrap_err().to_string();
    assert!(
        e.contains("the model panicked: synthetic panic for row id 7"),
        "{e}"
    );
}

#[test]
fn a_budget_smaller_than_one_batch_is_refused_naming_the_minimum() {
    let dir = tempdir();
    let input = write_rows(dir.path(), "in.jsonl", 100);
    let out = dir.path().join("o");
    let c = with_batching(
        synthetic_config(&input, &out, ""),
        100,
        Compute::Actors,
        1,
        8192,
    );
    let e = run(c).unwrap_err().to_string();
    assert!(
        e.contains("more than memory.object_store = 8192 bytes"),
        "{e}"
    );
    assert!(e.contains("raise memory.object_store to at least"), "{e}");
}

#[test]
fn a_batch_past_its_timeout_is_sent_again_and_the_first_result_wins() {
    use stook::config::Seconds;
    use stook::{BackendRegistry, Job, RunControl};
    let dir = tempdir();
    let input = write_rows(dir.path(), "in.jsonl", 400);
    let out = dir.path().join("o");
    // The first actor is 1000× slower: 5 s for each of its batches.
    let mut c = with_batching(
        synthetic_config(&input, &out, "batch_ms = 5\nlag_factor = 1000"),
        20,
        Compute::Actors,
        2,
        64 << 20,
    );
    c.batch.timeout = Some(Seconds(std::time::Duration::from_millis(200)));
    let job = Job::new(
        c,
        &BackendRegistry::with_builtins(),
        std::path::Path::new("t.toml"),
    )
    .unwrap();
    let t = std::time::Instant::now();
    let r = job.run_blocking(RunControl::default()).unwrap();
    assert!(
        t.elapsed() < std::time::Duration::from_secs(4),
        "took {:?}",
        t.elapsed()
    );
    assert!(r.peak_store_bytes <= r.store_budget_bytes);
    assert_synthetic_rows(&output_bytes(&out), 400);
}

/// Rows from an iterator, results as a stream: in order, correct, and a
/// slow reader holds the producer to a few batches ahead of it.
#[test]
fn rows_from_memory_stream_back_in_order_and_a_slow_reader_stops_the_producer() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    const N: u64 = 20_000;
    let produced = Arc::new(AtomicU64::new(0));
    let p = produced.clone();
    let rows = (0..N).map(move |i| {
        p.fetch_add(1, Ordering::SeqCst);
        let text = format!("row {i} {} é ✓", "word ".repeat(i as usize % 17));
        serde_json::json!({"id": i, "text": text})
    });
    let dir = tempdir();
    let mut config = stook::JobConfig::new("unused.jsonl", dir.path().join("unused"), "synthetic");
    config.batch.size = 100;
    let job = Job::new(config, &BackendRegistry::with_builtins(), "memory".as_ref()).unwrap();
    let (report, text, most_ahead) = actix::System::new().block_on(async move {
        let (handle, mut results) = job.start_rows(rows, RunControl::default());
        let (mut text, mut read, mut most_ahead) = (String::new(), 0u64, 0u64);
        while let Some(batch) = results.recv().await {
            for (row, json) in &batch.results {
                assert_eq!(*row, read);
                text.push_str(json);
                text.push('\n');
                read += 1;
            }
            most_ahead = most_ahead.max(produced.load(Ordering::SeqCst) - read);
            // A reader slower than the model.
            actix_rt::time::sleep(std::time::Duration::from_millis(3)).await;
        }
        (handle.wait().await.unwrap(), text, most_ahead)
    });
    assert_synthetic_rows(text.as_bytes(), N as usize);
    assert_eq!(report.rows, N);
    assert_eq!(report.leaked_store_objects, 0);
    // Admission holds the window (2 × 2 + 2), the lookahead (2) and the
    // stream's 2 batches, and the Source pulls one batch at a time.
    eprintln!("the producer ran at most {most_ahead} rows ahead of the reader");
    assert!(
        most_ahead <= 12 * 100,
        "the producer ran {most_ahead} rows ahead"
    );
    assert!(!dir.path().join("unused").exists(), "no output directory");
}

/// Dropping the result stream stops the job, as a cancel does.
#[test]
fn dropping_the_result_stream_stops_the_job() {
    let rows = (0..1_000_000u64).map(|i| serde_json::json!({"id": i, "text": "x"}));
    let dir = tempdir();
    let config = stook::JobConfig::new("unused.jsonl", dir.path().join("unused"), "synthetic");
    let job = Job::new(config, &BackendRegistry::with_builtins(), "memory".as_ref()).unwrap();
    let outcome = actix::System::new().block_on(async move {
        let (handle, mut results) = job.start_rows(rows, RunControl::default());
        results.recv().await.expect("a first batch");
        drop(results);
        handle.wait().await
    });
    let e = outcome.unwrap_err();
    assert!(e.is_cancelled(), "{e}");
}

#[test]
fn a_config_built_in_code_is_checked_as_a_config_file_is() {
    let dir = tempdir();
    let input = write_rows(dir.path(), "in.jsonl", 10);
    let registry = BackendRegistry::with_builtins();
    let refused = |c: stook::JobConfig| match Job::new(c, &registry, "code".as_ref()) {
        Err(stook::RunError::Config(e)) => e.problems.iter().map(|p| p.key.clone()).collect(),
        Err(e) => panic!("expected a config error, got {e}"),
        Ok(_) => panic!("a bad config was accepted"),
    };
    let mut c = synthetic_config(&input, &dir.path().join("o"), "");
    c.batch.size = 0;
    c.batch.num_actors = 0;
    c.checkpoint.shard_rows = 0;
    c.output.passthrough = vec!["_row".into()];
    let keys: Vec<String> = refused(c);
    // Every problem at once, each with its key.
    assert_eq!(
        keys,
        [
            "output.passthrough",
            "batch.size",
            "batch.num_actors",
            "checkpoint.shard_rows"
        ]
    );
    // The same values from TOML: the same keys.
    let toml = format!(
        "[input]\npath = {:?}\n[output]\npath = \"o\"\npassthrough = [\"_row\"]\n[model]\n\
         backend = \"echo\"\n[batch]\nsize = 0\nnum_actors = 0\n[checkpoint]\nshard_rows = 0\n",
        input
    );
    let problems = stook::JobConfig::from_toml(&toml, dir.path()).unwrap_err();
    let from_toml: Vec<String> = problems.iter().map(|p| p.key.clone()).collect();
    assert_eq!(from_toml, keys);
}
