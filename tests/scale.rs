//! One job split among worker processes (`--shard I/N`): the merged output
//! is byte-identical to one process's, whatever is killed, and what is
//! unsafe is refused.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

const ROWS: usize = 120_000;
/// Rows that fail in the model, each alone: they go to `_errors.jsonl`.
const POISON: &str = "[17, 60_001, 119_999]";

fn write_job(dir: &Path, name: &str, input: &Path, batch_ms: u64) -> PathBuf {
    let p = dir.join(format!("{name}.toml"));
    let out = dir.join(name);
    let all = dir.join(format!("{name}-all.jsonl"));
    std::fs::write(
        &p,
        format!(
            "[input]\npath = {input:?}\n\
             [output]\npath = {out:?}\nassemble = {all:?}\n\
             [model]\nbackend = \"synthetic\"\n\
             [model.options]\nbatch_ms = {batch_ms}\nfail_ids = {}\n\
             [batch]\nsize = 256\nnum_actors = 2\non_error = \"skip\"\nmax_retries = 0\n\
             [checkpoint]\nshard_rows = 5000\n",
            POISON.replace('_', "")
        ),
    )
    .unwrap();
    p
}

fn stook(args: &[&str]) -> Command {
    let mut c = Command::new(stook_bin());
    c.args(args)
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("JOB_COMPLETION_INDEX");
    c
}

fn ok(o: Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "exit {:?}\n{err}", o.status.code());
    err
}

fn worker(cfg: &Path, i: usize, n: usize) -> Child {
    stook(&["run", cfg.to_str().unwrap(), "--shard", &format!("{i}/{n}")])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits (at most 60 s) until `manifest` records a committed shard.
fn wait_for_a_commit(manifest: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while committed(manifest) < 1 {
        assert!(
            Instant::now() < deadline,
            "{} recorded no shard in 60 s",
            manifest.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Committed shards in a manifest (its lines less the header).
fn committed(manifest: &Path) -> usize {
    std::fs::read_to_string(manifest)
        .map(|t| t.lines().count().saturating_sub(1))
        .unwrap_or(0)
}

/// Every file of an output directory but the reports, manifests and locks,
/// with its bytes.
fn results(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| !n.starts_with("_report") && !n.starts_with("_manifest") && !n.starts_with('.'))
        .map(|n| {
            let b = std::fs::read(dir.join(&n)).unwrap();
            (n, b)
        })
        .collect();
    v.sort();
    v
}

#[test]
fn four_workers_one_killed_and_rerun_merge_to_one_process_bytes() {
    let dir = tempdir();
    let input = write_rows(dir.path(), "in.jsonl", ROWS);

    // One process.
    let single = write_job(dir.path(), "single", &input, 0);
    ok(stook(&["run", single.to_str().unwrap()]).output().unwrap());
    let reference = std::fs::read(dir.path().join("single-all.jsonl")).unwrap();

    // Four processes at once; worker 1 is killed once it has committed a
    // shard (of its six), then run again.
    let split = write_job(dir.path(), "split", &input, 20);
    let out = dir.path().join("split");
    let mut children: Vec<Child> = (0..4).map(|i| worker(&split, i, 4)).collect();
    let victim = out.join("_manifest-00001-of-00004.jsonl");
    wait_for_a_commit(&victim);
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(children[1].id() as i32, libc::SIGKILL) };
    let killed = children.remove(1).wait_with_output().unwrap();
    assert_eq!(
        killed.status.code(),
        None,
        "worker 1 was not killed mid-run"
    );
    let done_before_rerun = committed(&victim);
    assert!(done_before_rerun < 6, "worker 1 had finished");
    for c in children {
        let err = ok(c.wait_with_output().unwrap());
        assert!(err.contains("stook merge"), "{err}");
    }

    // Not yet complete: status and merge name what is missing.
    let status = ok(stook(&["status", split.to_str().unwrap()])
        .output()
        .unwrap());
    let o = stook(&["status", split.to_str().unwrap()])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&o.stdout);
    assert!(
        shown.contains(&format!(
            "{} of 24 shards committed",
            18 + done_before_rerun
        )),
        "{shown}{status}"
    );
    assert!(shown.contains("(worker 1/4)"), "{shown}");
    let o = stook(&["merge", split.to_str().unwrap()]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("shards are not committed") && err.contains("(worker 1/4)"),
        "{err}"
    );
    assert!(!out.join("_SUCCESS").exists());

    // The rerun resumes worker 1's own shards; then the merge.
    let err = ok(worker(&split, 1, 4).wait_with_output().unwrap());
    assert!(
        err.contains(&format!(
            "{} resumed from earlier runs",
            done_before_rerun * 5120
        )),
        "{err}"
    );
    ok(stook(&["merge", split.to_str().unwrap()]).output().unwrap());
    assert!(out.join("_SUCCESS").exists());

    let merged = std::fs::read(dir.path().join("split-all.jsonl")).unwrap();
    assert!(
        merged == reference,
        "merged output differs from one process's"
    );
    assert_eq!(results(&out), results(&dir.path().join("single")));
    // Each row once: results and bad rows together are the input, in order.
    let text = String::from_utf8(merged).unwrap();
    let errors = std::fs::read_to_string(out.join("_errors.jsonl")).unwrap();
    assert_eq!(text.lines().count() + errors.lines().count(), ROWS);
    assert_eq!(errors.lines().count(), 3, "{errors}");
    let ids = ids(&text);
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "rows out of order or repeated"
    );
    assert!(temporaries(&out).is_empty(), "{:?}", temporaries(&out));
}

#[test]
fn unsafe_splits_are_refused() {
    let dir = tempdir();
    let input = write_rows(dir.path(), "in.jsonl", 20_000);
    let cfg = write_job(dir.path(), "job", &input, 50);
    let c = cfg.to_str().unwrap();

    // A second process for the same worker, while the first runs.
    let mut first = worker(&cfg, 0, 2);
    let manifest = dir.path().join("job/_manifest-00000-of-00002.jsonl");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !manifest.exists() {
        assert!(Instant::now() < deadline, "worker 0 did not start");
        std::thread::sleep(Duration::from_millis(5));
    }
    let o = stook(&["run", c, "--shard", "0/2"]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("another stook process is running worker 0/2"),
        "{err}"
    );
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(first.id() as i32, libc::SIGKILL) };
    first.wait().unwrap();

    // Another split into the same directory; the whole job alone.
    for args in [vec!["--shard", "1/3"], vec![]] {
        let mut a = vec!["run", c];
        a.extend(args);
        let o = stook(&a).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(err.contains("belongs to a split into 2 worker(s)"), "{err}");
    }

    // Flags and environment that do not name a worker.
    for (args, env, expect) in [
        (vec!["--shard", "2/2"], None, "out of range"),
        (vec!["--shards", "2"], None, "needs this worker's index"),
        (vec![], Some(("JOB_COMPLETION_INDEX", "1")), "--shards N"),
        (
            vec![],
            Some(("SLURM_ARRAY_TASK_ID", "1")),
            "SLURM_ARRAY_TASK_COUNT",
        ),
    ] {
        let mut a = vec!["run", c];
        a.extend(args.iter().copied());
        let mut cmd = stook(&a);
        if let Some((k, v)) = env {
            cmd.env(k, v);
        }
        let o = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?} {env:?}: {err}");
        assert!(err.contains(expect), "{args:?} {env:?}: {err}");
    }

    // A split needs shards that are fixed ranges of rows.
    let unordered = dir.path().join("unordered.toml");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("[model]", "preserve_order = false\n[model]");
    std::fs::write(&unordered, text.replace("/job\"", "/unordered\"")).unwrap();
    let o = stook(&["run", unordered.to_str().unwrap(), "--shard", "0/2"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("output.preserve_order"), "{err}");
}

#[test]
fn the_scheduler_environment_names_the_worker() {
    let dir = tempdir();
    let input = write_rows(dir.path(), "in.jsonl", 3_000);
    let cfg = write_job(dir.path(), "job", &input, 0);
    let c = cfg.to_str().unwrap();
    let runs: [&[(&str, &str)]; 3] = [
        &[
            ("SLURM_ARRAY_TASK_ID", "0"),
            ("SLURM_ARRAY_TASK_COUNT", "3"),
        ],
        &[
            ("SLURM_ARRAY_TASK_ID", "1"),
            ("SLURM_ARRAY_TASK_MIN", "0"),
            ("SLURM_ARRAY_TASK_MAX", "2"),
        ],
        &[("JOB_COMPLETION_INDEX", "2")],
    ];
    for env in runs {
        let mut cmd = stook(&["run", c, "--shards", "3"]);
        cmd.envs(env.iter().copied());
        let err = ok(cmd.output().unwrap());
        assert!(err.contains("stook: worker "), "{err}");
    }
    let o = stook(&["status", c, "--json"]).output().unwrap();
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(s["workers"], 3);
    assert_eq!(s["missing_batches"], 0);
    assert_eq!(s["rows_committed"], 3_000);
    ok(stook(&["merge", c]).output().unwrap());
    let all = std::fs::read(dir.path().join("job-all.jsonl")).unwrap();
    let errors = std::fs::read_to_string(dir.path().join("job/_errors.jsonl")).unwrap();
    assert_eq!(errors.lines().count(), 1, "row 17");
    assert_eq!(String::from_utf8(all).unwrap().lines().count(), 2_999);
}

#[test]
fn a_lone_fresh_run_leaves_a_running_split_workers_files_alone() {
    let dir = tempdir();
    let input = write_rows(dir.path(), "in.jsonl", 20_000);
    let split = write_job(dir.path(), "split", &input, 20);
    let out = dir.path().join("split");
    let mut running = worker(&split, 0, 2);
    let manifest = out.join("_manifest-00000-of-00002.jsonl");
    wait_for_a_commit(&manifest);
    let o = stook(&["run", "--fresh", split.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("another stook process is running on this output directory")
            && err.contains("._manifest-00000-of-00002.jsonl.lock"),
        "{err}"
    );
    // The worker's files are all there, and it finishes its slice.
    assert!(manifest.exists() && out.join("part-00000.jsonl").exists());
    let done = running.wait().unwrap();
    assert!(done.success());
    assert_eq!(committed(&manifest), 2);
}
