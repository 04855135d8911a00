//! Checkpoint, resume and fault tolerance: kill it anywhere, rerun, get the
//! same bytes.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use stook::config::{Compute, OnError};

const KILL_ROWS: usize = 200_000;

/// A job config file for the binary over `input`, parts in `format`,
/// output in `out`.
fn write_config_as(
    dir: &Path,
    input: &Path,
    out: &Path,
    extra_options: &str,
    format: &str,
) -> PathBuf {
    let p = dir.join("job.toml");
    std::fs::write(
        &p,
        format!(
            "[input]\npath = {input:?}\n[output]\npath = {out:?}\nformat = {format:?}\n\
             [model]\nbackend = \"synthetic\"\n[model.options]\n{extra_options}\n\
             [batch]\nsize = 256\nnum_actors = 2\n[checkpoint]\nshard_rows = 5000\n"
        ),
    )
    .unwrap();
    p
}

/// xorshift64*, for kill moments that are random but the same every run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

fn kill_and_resume(signal: i32) {
    kill_and_resume_as(signal, "jsonl", 20);
}

/// Kills `rounds` runs writing `format` parts, then compares the resumed
/// output byte for byte with an uninterrupted run's.
fn kill_and_resume_as(signal: i32, format: &str, rounds: usize) {
    let dir = tempdir();
    let input = write_rows(dir.path(), "in.jsonl", KILL_ROWS);
    // The uninterrupted run, timed so that kills land inside a run.
    let reference_out = dir.path().join("reference");
    let cfg = write_config_as(dir.path(), &input, &reference_out, "", format);
    let t = Instant::now();
    let o = Command::new(stook_bin())
        .args(["run", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let full = t.elapsed().as_millis() as u64;
    let reference = output_bytes(&reference_out);
    if format == "jsonl" {
        assert_synthetic_rows(&reference, KILL_ROWS);
    }

    let out = dir.path().join("killed");
    let cfg = write_config_as(dir.path(), &input, &out, "", format);
    let mut rng = Rng(0x5eed_0000 + signal as u64);
    let mut interrupted = 0;
    for round in 0..rounds {
        let child = Command::new(stook_bin())
            .args(["run", cfg.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Each resumed run has less left to do: aim inside the first
        // quarter, and not before stook catches SIGINT (a signal before that meets
        // the default action, before any of stook runs; on a loaded machine
        // a process can take longer than any fixed wait to get there).
        wait_until_it_catches(child.id(), libc::SIGINT);
        std::thread::sleep(Duration::from_millis(rng.below(full / 4 + 1)));
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(child.id() as i32, signal) };
        let o = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        match o.status.code() {
            Some(0) => {}
            Some(130) if signal == libc::SIGINT => interrupted += 1,
            None if signal == libc::SIGKILL => interrupted += 1,
            other => panic!("round {round}: exit {other:?}\n{err}"),
        }
        if signal == libc::SIGINT {
            // A clean stop leaves nothing half-written.
            assert!(
                temporaries(&out).is_empty(),
                "round {round}: {:?}",
                temporaries(&out)
            );
        }
    }
    assert!(
        interrupted >= rounds / 2,
        "only {interrupted} of {rounds} runs were interrupted"
    );
    let o = Command::new(stook_bin())
        .args(["run", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        output_bytes(&out),
        reference,
        "output differs from the uninterrupted run"
    );
    assert!(temporaries(&out).is_empty());
    assert!(out.join("_SUCCESS").exists());
    // Exactly the manifest's parts, each once.
    let manifest = std::fs::read_to_string(out.join("_manifest.jsonl")).unwrap();
    let mut parts: Vec<String> = manifest
        .lines()
        .skip(1)
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["part"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    parts.sort();
    let before = parts.len();
    parts.dedup();
    assert_eq!(parts.len(), before, "a shard recorded twice");
    let on_disk = std::fs::read_dir(&out)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("part-")
        })
        .count();
    assert_eq!(on_disk, parts.len());
}

#[test]
fn sigkill_at_20_moments_then_resume_gives_the_same_bytes() {
    kill_and_resume(libc::SIGKILL);
}

#[test]
fn sigkill_at_10_moments_with_parquet_parts_then_resume_gives_the_same_bytes() {
    kill_and_resume_as(libc::SIGKILL, "parquet", 10);
}

#[test]
fn sigint_at_20_moments_then_resume_gives_the_same_bytes() {
    kill_and_resume(libc::SIGINT);
}

#[test]
fn one_poison_row_in_100_000_goes_to_the_errors_file_alone() {
    let dir = tempdir();
    let input = write_rows(dir.path(), "in.jsonl", 100_000);
    let out = dir.path().join("o");
    let mut c = with_batching(
        synthetic_config(&input, &out, "fail_ids = [54321]"),
        256,
        Compute::Actors,
        2,
        64 << 20,
    );
    c.batch.on_error = OnError::Skip;
    let r = run(c).unwrap();
    assert_eq!((r.rows, r.rows_written, r.errors), (100_000, 99_999, 1));
    let errors = std::fs::read_to_string(out.join("_errors.jsonl")).unwrap();
    let lines: Vec<&str> = errors.lines().collect();
    assert_eq!(lines.len(), 1);
    let e: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(
        (e["line"].as_u64(), e["row"].as_u64()),
        (Some(54322), Some(54321))
    );
    assert!(e["message"]
        .as_str()
        .unwrap()
        .contains("synthetic failure for row id 54321"));
    let written = String::from_utf8(output_bytes(&out)).unwrap();
    let mut expect = 0u64;
    for line in written.lines() {
        if expect == 54321 {
            expect += 1;
        }
        assert!(line.starts_with(&format!("{{\"id\":{expect},")), "{line}");
        expect += 1;
    }
    assert_eq!(expect, 100_000);
}

#[test]
fn a_panicking_batch_keeps_its_actor_and_model() {
    let dir = tempdir();
    let input = write_rows(dir.path(), "in.jsonl", 2_000);
    let out = dir.path().join("o");
    let opts = "panic_ids = [777, 1500]\nload_ms = 20";
    let mut c = with_batching(
        synthetic_config(&input, &out, opts),
        64,
        Compute::Actors,
        3,
        64 << 20,
    );
    c.batch.on_error = OnError::Skip;
    let r = run(c).unwrap();
    assert_eq!(r.errors, 2);
    assert_eq!(r.model_loads, 3, "a panic must not reload the model");
    let errors = std::fs::read_to_string(out.join("_errors.jsonl")).unwrap();
    assert!(
        errors.contains("the model panicked: synthetic panic for row id 777"),
        "{errors}"
    );
}

#[test]
fn a_model_that_panics_on_every_load_fails_the_job_once() {
    let dir = tempdir();
    let input = write_rows(dir.path(), "in.jsonl", 100);
    let out = dir.path().join("o");
    let c = with_batching(
        synthetic_config(&input, &out, "load_panics = true"),
        10,
        Compute::Actors,
        2,
        64 << 20,
    );
    let t = Instant::now();
    let e = run(c).unwrap_err().to_string();
    assert!(
        e.contains(
            "loading the model on cpu failed: the model panicked: synthetic panic while loading"
        ),
        "{e}"
    );
    assert!(t.elapsed() < Duration::from_secs(30));
    let c = with_batching(
        synthetic_config(&input, &out, "load_panics = true"),
        10,
        Compute::Tasks,
        2,
        64 << 20,
    );
    let e = run(c).unwrap_err().to_string();
    assert!(e.contains("synthetic panic while loading"), "{e}");
}

fn complete_run(dir: &Path, rows: usize) -> (PathBuf, PathBuf, Vec<u8>) {
    let input = write_rows(dir, "in.jsonl", rows);
    let out = dir.join("o");
    let mut c = with_batching(
        synthetic_config(&input, &out, ""),
        100,
        Compute::Actors,
        2,
        64 << 20,
    );
    c.checkpoint.shard_rows = 500;
    run(c).unwrap();
    let bytes = output_bytes(&out);
    (input, out, bytes)
}

fn config(input: &Path, out: &Path, options: &str, size: usize) -> stook::JobConfig {
    let mut c = with_batching(
        synthetic_config(input, out, options),
        size,
        Compute::Actors,
        2,
        64 << 20,
    );
    c.checkpoint.shard_rows = 500;
    c
}

#[test]
fn resuming_against_a_changed_input_or_config_is_refused_naming_the_change() {
    let dir = tempdir();
    let (input, out, _) = complete_run(dir.path(), 2_000);
    let e = run(config(&input, &out, "", 50)).unwrap_err().to_string();
    assert!(
        e.contains("cannot resume: the config changed (batch.size: 100 → 50)"),
        "{e}"
    );
    // Resume ignored input.columns: which columns are read is part of
    // what the output holds.
    let mut c = config(&input, &out, "", 100);
    c.input.columns = Some(vec!["id".into(), "text".into()]);
    let e = run(c).unwrap_err().to_string();
    assert!(e.contains("input.columns"), "{e}");
    let e = run(config(&input, &out, "output_bytes = 10", 100))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("model.options: {} → {\"output_bytes\":10}"),
        "{e}"
    );
    std::fs::write(
        &input,
        std::fs::read(&input)
            .unwrap()
            .into_iter()
            .chain(*b"{\"text\":\"x\"}\n")
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let e = run(config(&input, &out, "", 100)).unwrap_err().to_string();
    assert!(e.contains("the input changed (size"), "{e}");
    assert!(e.contains("pass --fresh to start over"), "{e}");
}

#[test]
fn a_corrupted_committed_part_is_detected_and_its_shard_redone() {
    let dir = tempdir();
    let (input, out, reference) = complete_run(dir.path(), 2_000);
    let part = out.join("part-00001.jsonl");
    let mut bytes = std::fs::read(&part).unwrap();
    bytes[10] ^= 1;
    std::fs::write(&part, bytes).unwrap();
    std::fs::remove_file(out.join("part-00003.jsonl")).unwrap();
    let r = run(config(&input, &out, "", 100)).unwrap();
    assert_eq!(r.rows_this_run, 1_000, "two shards of 500 redone");
    assert_eq!(r.rows, 2_000);
    assert_eq!(output_bytes(&out), reference);
}

#[test]
fn a_torn_manifest_line_and_stray_files_are_cleaned_up() {
    let dir = tempdir();
    let (input, out, reference) = complete_run(dir.path(), 2_000);
    let manifest = out.join("_manifest.jsonl");
    let mut text = std::fs::read_to_string(&manifest).unwrap();
    // Drop the last record (its shard is redone) and leave half a line.
    let cut = text.trim_end().rfind('\n').unwrap() + 1;
    text.truncate(cut);
    text.push_str("{\"shard\":3,\"pa");
    std::fs::write(&manifest, text).unwrap();
    std::fs::write(out.join("part-00099.jsonl"), "stray").unwrap();
    std::fs::write(out.join(".part-00004.jsonl.tmp"), "half").unwrap();
    let r = run(config(&input, &out, "", 100)).unwrap();
    assert_eq!(r.rows_this_run, 500);
    assert_eq!(output_bytes(&out), reference);
    assert!(!out.join("part-00099.jsonl").exists());
    assert!(temporaries(&out).is_empty());
}

#[test]
fn resume_false_refuses_a_directory_with_a_manifest() {
    let dir = tempdir();
    let (input, out, _) = complete_run(dir.path(), 300);
    let mut c = config(&input, &out, "", 100);
    c.checkpoint.resume = false;
    let e = run(c).unwrap_err().to_string();
    assert!(
        e.contains("checkpoint.resume = false; pass --fresh to start over"),
        "{e}"
    );
}

/// Waits (at most 10 s) until process `pid` has a handler for `signal`, as
/// /proc/PID/status's SigCgt mask shows it.
fn wait_until_it_catches(pid: u32, signal: i32) {
    let bit = 1u64 << (signal - 1);
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let caught = status
            .lines()
            .find_map(|l| l.strip_prefix("SigCgt:"))
            .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
            .unwrap_or(0);
        if caught & bit != 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}
