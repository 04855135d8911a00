//! The `python` backend: a Python class (tests/python_models.py) in worker
//! processes, through `stook run`. Needs .venv-arrow (scripts/pyarrow-env.sh:
//! pyarrow, numpy and pandas from PyPI); the tests fail, saying so, without
//! it. Every test checks that no worker outlives the run.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::openai::{python, root};
use common::*;
use serde_json::Value;

/// Row `i`'s text: varied lengths, non-ASCII, and the trigger word of
/// `triggers` where it names `i`.
fn text(i: usize, triggers: &[(usize, &str)]) -> String {
    let word = triggers
        .iter()
        .find(|(at, _)| *at == i)
        .map_or("", |(_, w)| *w);
    format!("row {i} {}é ✓ {word}", "word ".repeat(i % 13))
}

fn input(dir: &Path, n: usize, triggers: &[(usize, &str)]) -> PathBuf {
    let path = dir.join("in.jsonl");
    let lines: String = (0..n)
        .map(|i| serde_json::json!({"id": i, "text": text(i, triggers)}).to_string() + "\n")
        .collect();
    std::fs::write(&path, lines).unwrap();
    path
}

/// A job of class `class` over `input` into `dir/out`, with more
/// `[model.options]` and `[batch]` lines.
fn job(dir: &Path, input: &Path, out: &str, class: &str, options: &str, batch: &str) -> PathBuf {
    let marks = dir.join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let cfg = dir.join(format!("{out}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "[input]\npath = {input:?}\n[output]\npath = {:?}\n[model]\nbackend = \"python\"\n\
             [model.options]\npython = {:?}\nmodule = {:?}\nclass = {class:?}\n{options}\n\
             [batch]\nsize = 16\nnum_actors = 2\n{batch}\n",
            dir.join(out),
            python(),
            root().join("tests/python_models.py"),
        ),
    )
    .unwrap();
    cfg
}

fn marks_kwargs(dir: &Path) -> String {
    format!("kwargs = {{ marks = {:?} }}", dir.join("marks"))
}

fn stook(args: &[&str]) -> Output {
    Command::new(stook_bin()).args(args).output().unwrap()
}

fn run_ok(cfg: &Path) -> Value {
    let o = stook(&["run", cfg.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = cfg.with_extension("");
    serde_json::from_slice(&std::fs::read(out.join("_report.json")).unwrap()).unwrap()
}

/// Every worker that recorded its pid under `dir/marks/pids` is gone.
fn assert_no_worker_left(dir: &Path) {
    let pids = dir.join("marks/pids");
    let Ok(entries) = std::fs::read_dir(&pids) else {
        return;
    };
    for e in entries {
        let pid = e.unwrap().file_name().to_string_lossy().to_string();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        assert!(
            status.is_empty() || status.contains("State:\tZ"),
            "worker {pid} still runs after the job: {status}"
        );
    }
}

fn pids(dir: &Path) -> usize {
    count(dir.join("marks/pids").to_str().unwrap())
}

/// The typed results' JSON Lines, checked against the input row by row.
fn check_typed(out: &[u8], n: usize, skipped: &[usize], triggers: &[(usize, &str)]) {
    let text_out = String::from_utf8(out.to_vec()).unwrap();
    let lines: Vec<Value> = text_out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let expect: Vec<usize> = (0..n).filter(|i| !skipped.contains(i)).collect();
    assert_eq!(lines.len(), expect.len());
    for (v, i) in lines.iter().zip(expect) {
        let t = text(i, triggers);
        assert_eq!(v["id"], i, "{v}");
        assert_eq!(v["chars"], t.chars().count(), "{v}");
        assert_eq!(v["shout"], t.to_uppercase(), "{v}");
    }
}

#[test]
fn every_batch_format_gives_the_same_typed_results_from_json_lines_and_parquet() {
    let dir = tempdir();
    let d = dir.path();
    let n = 300;
    let inp = input(d, n, &[]);
    let kw = marks_kwargs(d);
    let mut outputs = Vec::new();
    for (class, format) in [
        ("Arrow", "pyarrow"),
        ("Numpy", "numpy"),
        ("Pandas", "pandas"),
    ] {
        let out = format!("out-{format}");
        let cfg = job(
            d,
            &inp,
            &out,
            class,
            &format!("batch_format = {format:?}\n{kw}"),
            "",
        );
        let report = run_ok(&cfg);
        assert_eq!(report["rows_written"], n, "{report}");
        let bytes = output_bytes(&d.join(&out));
        check_typed(&bytes, n, &[], &[]);
        outputs.push((format, bytes));
    }
    for (format, bytes) in &outputs[1..] {
        assert!(*bytes == outputs[0].1, "{format} differs from pyarrow");
    }
    // The same rows as a Parquet table: the class gets its typed columns.
    let table = d.join("in.parquet");
    let py = Command::new(python())
        .args([
            "-c",
            "import sys, pyarrow.json as j, pyarrow.parquet as pq; \
             pq.write_table(j.read_json(sys.argv[1]), sys.argv[2], row_group_size=50)",
        ])
        .arg(&inp)
        .arg(&table)
        .status()
        .unwrap();
    assert!(py.success());
    let cfg = job(d, &table, "out-parquet", "Arrow", &kw, "");
    run_ok(&cfg);
    assert!(output_bytes(&d.join("out-parquet")) == outputs[0].1);
    assert_eq!(pids(d), 8, "two workers a run, each loaded once");
    assert_no_worker_left(d);
}

#[test]
fn a_class_without_an_output_schema_writes_each_row_as_a_json_object() {
    let dir = tempdir();
    let d = dir.path();
    let inp = input(d, 40, &[]);
    let cfg = job(d, &inp, "out", "Untyped", "", "");
    run_ok(&cfg);
    let out = String::from_utf8(output_bytes(&d.join("out"))).unwrap();
    let expect: String = (0..40)
        .map(|i| {
            format!(
                "{{\"id\":{i},\"words\":{}}}\n",
                text(i, &[]).matches(' ').count()
            )
        })
        .collect();
    assert_eq!(out, expect);
}

#[test]
fn exceptions_and_interpreter_crashes_cost_only_their_own_rows() {
    let dir = tempdir();
    let d = dir.path();
    let n = 120;
    let triggers = [(7, "RAISE"), (40, "CRASH")];
    let inp = input(d, n, &triggers);
    let cfg = job(
        d,
        &inp,
        "out",
        "Faulty",
        &marks_kwargs(d),
        "on_error = \"skip\"\nmax_retries = 1",
    );
    let report = run_ok(&cfg);
    check_typed(&output_bytes(&d.join("out")), n, &[7, 40], &triggers);
    // Byte for byte: a clean run's output less those two rows.
    run_ok(&job(d, &inp, "clean", "Arrow", "", ""));
    let clean = String::from_utf8(output_bytes(&d.join("clean"))).unwrap();
    let expect: String = clean
        .lines()
        .enumerate()
        .filter(|(i, _)| ![7, 40].contains(i))
        .map(|(_, l)| format!("{l}\n"))
        .collect();
    assert!(output_bytes(&d.join("out")) == expect.into_bytes());
    let errors = std::fs::read_to_string(d.join("out/_errors.jsonl")).unwrap();
    let errors: Vec<Value> = errors
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert_eq!(errors[0]["line"], 8);
    let first = errors[0].to_string();
    assert!(
        first.contains("ValueError: cannot score") && first.contains("python_models.py"),
        "the exception and its traceback: {first}"
    );
    assert_eq!(errors[1]["line"], 41);
    assert!(
        errors[1].to_string().contains("SIGSEGV"),
        "the crash: {}",
        errors[1]
    );
    // The worker that crashed was replaced, each time.
    assert!(
        report["counters"]["python_worker_restarts"].as_u64() >= Some(2),
        "{report}"
    );
    assert_no_worker_left(d);
}

#[test]
fn a_worker_killed_mid_batch_and_one_that_hangs_change_nothing_in_the_output() {
    let dir = tempdir();
    let d = dir.path();
    let n = 200;
    let triggers = [(50, "KILL"), (120, "HANG")];
    let inp = input(d, n, &triggers);
    let kw = marks_kwargs(d);
    let clean = job(d, &inp, "clean", "Arrow", &kw, "");
    run_ok(&clean);
    let started = Instant::now();
    let faulty = job(d, &inp, "faulty", "Faulty", &kw, "timeout = 3");
    let report = run_ok(&faulty);
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the hang was not cut short"
    );
    assert!(d.join("marks/killed").exists() && d.join("marks/hung").exists());
    assert!(output_bytes(&d.join("faulty")) == output_bytes(&d.join("clean")));
    check_typed(&output_bytes(&d.join("faulty")), n, &[], &triggers);
    // The killed worker was replaced (the one killed for hanging is
    // replaced only if its actor gets another batch).
    assert!(
        report["counters"]["python_worker_restarts"].as_u64() >= Some(1),
        "{report}"
    );
    assert_no_worker_left(d);
}

#[test]
fn results_ten_times_their_input_stay_within_the_store_budget() {
    let dir = tempdir();
    let d = dir.path();
    let n = 2000;
    let inp = input(d, n, &[]);
    let cfg = job(d, &inp, "out", "Vectors", "result_bytes_per_row = 1100", "");
    std::fs::write(
        &cfg,
        std::fs::read_to_string(&cfg).unwrap() + "[memory]\nobject_store = \"1MiB\"\n",
    )
    .unwrap();
    let report = run_ok(&cfg);
    assert_eq!(report["rows_written"], n);
    let (peak, budget) = (
        report["peak_store_bytes"].as_u64().unwrap(),
        report["store_budget_bytes"].as_u64().unwrap(),
    );
    let input_bytes = std::fs::metadata(&inp).unwrap().len();
    assert!(peak <= budget && budget < input_bytes * 10, "{report}");
    // The workers' own memory is in the report (an interpreter with
    // pyarrow loaded holds tens of MiB).
    assert!(
        report["peak_workers_rss_bytes"].as_u64() > Some(20 << 20),
        "{report}"
    );
    let out = String::from_utf8(output_bytes(&d.join("out"))).unwrap();
    assert_eq!(out.lines().count(), n);
    // The vectors as a Parquet table into a numpy class: each row's vector
    // is a row of a 2-D array.
    let vectors = job(d, &inp, "vectors.parquet", "Vectors", "", "");
    let text = std::fs::read_to_string(&vectors)
        .unwrap()
        .replace("[model]", "format = \"parquet\"\n[model]");
    std::fs::write(&vectors, text).unwrap();
    run_ok(&vectors);
    let sums = job(
        d,
        &d.join("vectors.parquet"),
        "sums",
        "VectorSums",
        "batch_format = \"numpy\"",
        "",
    );
    run_ok(&sums);
    let sums = String::from_utf8(output_bytes(&d.join("sums"))).unwrap();
    assert_eq!(sums.lines().count(), n);
    assert!(
        sums.lines().all(|l| l == "{\"total\":256.0,\"width\":256}"),
        "{}",
        sums.lines().next().unwrap_or_default()
    );
    // Too little room for them is a clear error, not a crash.
    let cfg = job(d, &inp, "small", "Vectors", "result_bytes_per_row = 16", "");
    let o = stook(&["run", cfg.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("result_bytes_per_row"), "{err}");
}

#[test]
fn bad_options_name_their_key() {
    let dir = tempdir();
    let d = dir.path();
    let inp = input(d, 5, &[]);
    let cases = [
        (
            "module = \"nowhere.py\"\nclass = \"X\"",
            "model.options.module",
        ),
        ("class = \"NoSuchClass\"", "model.options.module"),
        ("python = \"/no/such/python\"", "model.options.python"),
        ("batch_format = \"polars\"", "model.options.batch_format"),
    ];
    for (i, (options, key)) in cases.iter().enumerate() {
        let mut cfg = std::fs::read_to_string(job(d, &inp, "x", "Arrow", "", "")).unwrap();
        for line in options.lines() {
            let k = line.split(' ').next().unwrap();
            cfg = cfg
                .lines()
                .filter(|l| !l.starts_with(&format!("{k} ")))
                .map(|l| format!("{l}\n"))
                .collect();
            cfg = cfg.replace("[batch]", &format!("{line}\n[batch]"));
        }
        let path = d.join(format!("bad{i}.toml"));
        std::fs::write(&path, cfg).unwrap();
        let o = stook(&["run", path.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{options}");
        assert!(err.contains(key), "{options}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// Starts `stook run cfg` and waits (a minute at most) until `ready`
/// says so.
fn spawn_until(cfg: &Path, ready: impl Fn() -> bool) -> std::process::Child {
    let child = Command::new(stook_bin())
        .args(["run", cfg.to_str().unwrap()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !ready() && started.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(ready(), "{} never got there", cfg.display());
    child
}

/// Starts `stook run cfg`, waits until `ready` exists, then sends SIGINT
/// `times` times (a second one exits at once); the exit status.
fn interrupt(cfg: &Path, ready: &Path, times: usize) -> std::process::ExitStatus {
    let mut child = spawn_until(cfg, || ready.exists());
    for _ in 0..times {
        // SAFETY: plain syscall on our child.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        std::thread::sleep(Duration::from_millis(300));
    }
    child.wait().unwrap()
}

#[test]
fn ctrl_c_stops_every_worker() {
    let dir = tempdir();
    let d = dir.path();
    let inp = input(d, 2000, &[]);
    // One Ctrl-C: the batches in flight finish, the workers are stopped.
    let cfg = job(d, &inp, "out", "Slow", &marks_kwargs(d), "");
    let status = interrupt(&cfg, &d.join("marks/pids"), 1);
    assert_eq!(status.code(), Some(130), "{status}");
    assert_eq!(pids(d), 2);
    assert_no_worker_left(d);
    // Two, while a worker hangs: stook exits at once, and the workers die
    // with it (PR_SET_PDEATHSIG).
    let hang = input(d, 400, &[(3, "HANG")]);
    let cfg = job(d, &hang, "hang", "Faulty", &marks_kwargs(d), "");
    let status = interrupt(&cfg, &d.join("marks/hung"), 2);
    assert_eq!(status.code(), Some(130), "{status}");
    std::thread::sleep(Duration::from_millis(500));
    assert_no_worker_left(d);
    // SIGKILL of stook itself: the workers die with it.
    std::fs::remove_file(d.join("marks/hung")).unwrap();
    let cfg = job(d, &hang, "killed", "Faulty", &marks_kwargs(d), "");
    let mut child = spawn_until(&cfg, || d.join("marks/hung").exists());
    child.kill().unwrap();
    child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_no_worker_left(d);
}

/// A `sheaf` job over `input`: the user-defined backend of
/// tests/sheaf_backends.py, with more `[batch]` lines.
fn sheaf_job(dir: &Path, input: &Path, out: &str, backend: &str, batch: &str) -> PathBuf {
    let cfg = dir.join(format!("{out}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "[input]\npath = {input:?}\n[output]\npath = {:?}\n[model]\nbackend = \"sheaf\"\n\
             [model.options]\npython = {:?}\nimports = [{:?}]\n\
             spec = {{ name = \"minilm\", model_type = \"embedding\", backend = {backend:?}, \
             backend_kwargs = {{ model_dir = {:?} }} }}\n[batch]\nsize = 8\nnum_actors = 2\n{batch}\n",
            dir.join(out),
            python(),
            root().join("tests/sheaf_backends.py"),
            common::openai::model_dir(),
        ),
    )
    .unwrap();
    cfg
}

/// `stook run`, with one BLAS thread and OpenBLAS's Haswell kernels, as
/// scripts/record-sheaf-fixture.sh ran sheaf-serve's BatchRunner.
fn stook_blas(cfg: &Path) -> Output {
    Command::new(stook_bin())
        .args(["run", cfg.to_str().unwrap()])
        .env("OPENBLAS_CORETYPE", "Haswell")
        .env("OPENBLAS_NUM_THREADS", "1")
        .output()
        .unwrap()
}

#[test]
fn a_sheaf_backend_of_ones_own_writes_what_sheaf_serves_batchrunner_writes() {
    let dir = tempdir();
    let d = dir.path();
    let requests = root().join("tests/fixtures/sheaf-requests.jsonl");
    let recorded = std::fs::read(root().join("tests/fixtures/sheaf-batchrunner.jsonl")).unwrap();
    for (out, batch) in [("actors", ""), ("tasks", "compute = \"tasks\"")] {
        let o = stook_blas(&sheaf_job(d, &requests, out, "minilm-numpy", batch));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(
            output_bytes(&d.join(out)) == recorded,
            "{out}: not byte-identical to BatchRunner's output"
        );
    }
}

#[test]
fn sheaf_requests_are_checked_by_line_and_ids_are_stable() {
    let dir = tempdir();
    let d = dir.path();
    let line = |i: usize, extra: &str| {
        format!(
            "{{\"model_type\": \"embedding\", \"model_name\": \"m\", \"texts\": [\"text {i}\"]{extra}}}\n"
        )
    };
    // A wrong model_type: refused before the model loads, by line.
    let bad_type = d.join("bad-type.jsonl");
    std::fs::write(
        &bad_type,
        line(0, "") + &line(1, "").replace("embedding", "time_series"),
    )
    .unwrap();
    let o = stook_blas(&sheaf_job(d, &bad_type, "t", "minilm-numpy", ""));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains(":2:") && err.contains("model_type"), "{err}");
    assert!(
        !err.contains("Python worker"),
        "refused before any worker: {err}"
    );
    // A request_id that is no UUID: sheaf's own model refuses it, named by
    // line; with on_error = "skip" it alone goes to _errors.jsonl. Rows
    // without request_id or normalize are fine (ids from the input).
    let input = d.join("requests.jsonl");
    let lines: String = (0..12)
        .map(|i| match i {
            5 => line(i, ", \"request_id\": \"not-a-uuid\""),
            7 => line(i, ", \"normalize\": false"),
            _ => line(i, ""),
        })
        .collect();
    std::fs::write(&input, lines).unwrap();
    let o = stook_blas(&sheaf_job(d, &input, "fail", "minilm-numpy", ""));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("requests.jsonl:6: ")
            && err.contains("request_id: Input should be a valid UUID"),
        "{err}"
    );
    let skip = "on_error = \"skip\"\nmax_retries = 0";
    for out in ["skip", "again"] {
        let o = stook_blas(&sheaf_job(d, &input, out, "minilm-numpy", skip));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let errors = std::fs::read_to_string(d.join("skip/_errors.jsonl")).unwrap();
    assert_eq!(errors.lines().count(), 1, "{errors}");
    let e: Value = serde_json::from_str(errors.trim()).unwrap();
    assert_eq!(e["line"], 6, "{e}");
    let out = output_bytes(&d.join("skip"));
    assert!(
        out == output_bytes(&d.join("again")),
        "ids differ between runs"
    );
    let ids: Vec<String> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["request_id"].to_string())
        .collect();
    assert_eq!(ids.len(), 11);
    assert!(ids.iter().all(|id| id.len() == 38), "{ids:?}");
    // A backend name the registry does not know: a config error.
    let o = stook_blas(&sheaf_job(d, &input, "x", "no-such-backend", ""));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("model.options.spec") && err.contains("minilm-numpy"),
        "names the key and what is registered: {err}"
    );
}

#[test]
fn a_killed_job_resumes_and_passthrough_columns_come_along() {
    let dir = tempdir();
    let d = dir.path();
    let n = 3000;
    let inp = input(d, n, &[]);
    let with = |cfg: PathBuf| {
        let text = std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("[model]", "passthrough = [\"text\"]\n[model]")
            + "[checkpoint]\nshard_rows = 200\n";
        std::fs::write(&cfg, text).unwrap();
        cfg
    };
    let clean = with(job(d, &inp, "clean", "Arrow", "", ""));
    run_ok(&clean);
    let cfg = with(job(d, &inp, "out", "Slow", &marks_kwargs(d), ""));
    // SIGKILL once two shards are committed, then run again to the end.
    let committed = || {
        std::fs::read_to_string(d.join("out/_manifest.jsonl"))
            .map(|m| m.matches("\"shard\"").count())
            .unwrap_or(0)
    };
    let mut child = spawn_until(&cfg, || committed() >= 2);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(committed() >= 2 && committed() < 15, "killed mid-run");
    let report = run_ok(&cfg);
    assert!(report["rows_resumed"].as_u64() >= Some(400), "{report}");
    let out = output_bytes(&d.join("out"));
    assert!(
        out == output_bytes(&d.join("clean")),
        "resumed output differs"
    );
    let first: Value = serde_json::from_slice(out.split(|b| *b == b'\n').next().unwrap()).unwrap();
    assert_eq!(first["text"], text(0, &[]), "{first}");
    std::thread::sleep(Duration::from_millis(500));
    assert_no_worker_left(d);
}
