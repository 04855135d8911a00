//! The real binary on real files: bad input, bad config, devices, signals.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

struct Case {
    dir: tempfile::TempDir,
}

impl Case {
    fn new() -> Self {
        Case { dir: tempdir() }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn input(&self, bytes: &[u8]) -> PathBuf {
        let p = self.path("in.jsonl");
        std::fs::write(&p, bytes).unwrap();
        p
    }

    /// A config for the synthetic backend over in.jsonl, plus `extra` TOML.
    fn config(&self, model_options: &str, batch: &str) -> PathBuf {
        let text = format!(
            "[input]\npath = \"in.jsonl\"\n[output]\npath = \"out\"\n[model]\nbackend = \"synthetic\"\n\
             [model.options]\n{model_options}\n[batch]\n{batch}\n"
        );
        let p = self.path("job.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    fn stook(&self, args: &[&str]) -> Output {
        Command::new(stook_bin())
            .args(args)
            .env("RUST_LOG", "stook_actors=info")
            .output()
            .unwrap()
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn assert_refused(case: &Case, expect: &[&str]) {
    let cfg = case.config("", "");
    for cmd in ["validate", "run"] {
        let o = case.stook(&[cmd, cfg.to_str().unwrap()]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(3), "{cmd}: {err}");
        for e in expect {
            assert!(err.contains(e), "{cmd}: expected {e:?} in:\n{err}");
        }
        assert!(
            !err.contains("loading model"),
            "{cmd} loaded the model:\n{err}"
        );
        assert!(
            err.len() < 4000,
            "{cmd}: error output too long ({} bytes)",
            err.len()
        );
    }
    assert!(!case.path("out").join("_SUCCESS").exists());
}

fn good(i: usize) -> String {
    format!("{{\"id\": {i}, \"text\": \"row {i}\"}}\n")
}

#[test]
fn invalid_json_names_the_file_and_line() {
    let c = Case::new();
    let mut data = good(0) + &good(1);
    data.push_str("{\"id\": 2, \"text\": \"abc\"\n");
    c.input(data.as_bytes());
    assert_refused(&c, &["in.jsonl:3:", "EOF while parsing"]);
}

#[test]
fn a_wrong_field_type_is_named() {
    let c = Case::new();
    c.input(format!("{}{{\"id\": 1, \"text\": 5}}\n", good(0)).as_bytes());
    assert_refused(
        &c,
        &[
            "in.jsonl:2:",
            "field \"text\": invalid type: integer `5`, expected a string",
        ],
    );
}

#[test]
fn a_missing_field_is_named() {
    let c = Case::new();
    c.input(b"{\"id\": 1}\n");
    assert_refused(&c, &["in.jsonl:1:", "missing field \"text\""]);
}

#[test]
fn invalid_utf8_names_the_byte() {
    let c = Case::new();
    let mut data = good(0).into_bytes();
    data.extend_from_slice(b"{\"id\": 1, \"text\": \"caf\xe9\"}\n");
    c.input(&data);
    assert_refused(&c, &["in.jsonl:2:23:", "invalid UTF-8 at byte 23"]);
}

#[test]
fn a_line_that_is_not_an_object_is_refused() {
    let c = Case::new();
    c.input(format!("{}[1, 2]\n\"text\"\n", good(0)).as_bytes());
    assert_refused(
        &c,
        &[
            "in.jsonl:2:",
            "in.jsonl:3:",
            "expected a JSON object",
            "2 bad rows",
        ],
    );
}

#[test]
fn an_empty_file_is_refused() {
    let c = Case::new();
    c.input(b"");
    assert_refused(&c, &["in.jsonl: the input has no rows"]);
    c.input(b"\n  \n\r\n");
    assert_refused(&c, &["in.jsonl: the input has no rows"]);
}

#[test]
fn a_50_mb_line_is_refused_with_a_short_message_and_later_lines_keep_their_numbers() {
    let c = Case::new();
    let mut data = good(0).into_bytes();
    data.extend_from_slice(b"{\"id\": 1, \"text\": \"");
    data.extend(std::iter::repeat_n(b'a', 50 << 20));
    data.extend_from_slice(b"\"}\n");
    data.extend_from_slice(good(2).as_bytes());
    data.extend_from_slice(b"{\"id\": 3, \"text\": \"x\"} trailing\n");
    c.input(&data);
    assert_refused(
        &c,
        &[
            "in.jsonl:2: the line is 52428821 bytes long, more than input.max_line_bytes = 16777216 bytes",
            "in.jsonl:4:",
            "unexpected characters after the JSON value",
        ],
    );
}

#[test]
fn skip_writes_bad_rows_to_the_errors_file_and_completes_the_rest() {
    let c = Case::new();
    let mut data = Vec::new();
    for i in 0..50 {
        match i {
            10 => data.extend_from_slice(b"{\"id\": 10, \"text\": \n"),
            20 => data.extend_from_slice(b"{\"id\": 20, \"text\": \"\xff\"}\n"),
            30 => data.extend_from_slice(b"[30]\n"),
            _ => data.extend_from_slice(good(i).as_bytes()),
        }
    }
    c.input(&data);
    let cfg = c.config("", "size = 8\non_error = \"skip\"");
    let o = c.stook(&["run", cfg.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = c.path("out");
    let written = String::from_utf8(output_bytes(&out)).unwrap();
    let ids = ids(&written);
    let expect: Vec<u64> = (0..50).filter(|i| ![10, 20, 30].contains(i)).collect();
    assert_eq!(ids, expect);
    let errors = std::fs::read_to_string(out.join("_errors.jsonl")).unwrap();
    let lines: Vec<u64> = errors
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["line"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(lines, [11, 21, 31]);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("_report.json")).unwrap()).unwrap();
    assert_eq!(report["errors"], 3);
    assert_eq!(report["rows_written"], 47);
}

#[test]
fn crlf_blank_lines_a_bom_and_no_final_newline_are_fine() {
    let c = Case::new();
    let data = b"\xEF\xBB\xBF{\"id\": 0, \"text\": \"a\"}\r\n\r\n   \n{\"id\": 1, \"text\": \"b\"}\r\n{\"id\": 2, \"text\": \"c\"}";
    c.input(data);
    let cfg = c.config("", "size = 2");
    let o = c.stook(&["run", cfg.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8(output_bytes(&c.path("out"))).unwrap();
    assert_eq!(out.lines().count(), 3);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(c.path("out").join("_report.json")).unwrap())
            .unwrap();
    assert_eq!(report["blank_lines"], 2);
    let v = c.stook(&["validate", cfg.to_str().unwrap()]);
    assert!(
        stderr(&v).contains("3 rows OK, 2 blank lines"),
        "{}",
        stderr(&v)
    );
}

/// The GPUs NVML reports on this machine (none without a driver): the
/// device tests hold on a machine with GPUs too.
fn gpus_here() -> usize {
    stook_actors::GpuInventory::probe().gpus.len()
}

#[test]
fn more_gpus_than_nvml_reports_are_refused_before_any_model_loads() {
    let c = Case::new();
    c.input(good(0).as_bytes());
    let (have, want) = (gpus_here(), gpus_here() + 1);
    let cfg = c.config(
        "load_ms = 1",
        &format!("num_actors = {want}\nnum_gpus_per_actor = 1"),
    );
    let o = c.stook(&["run", cfg.to_str().unwrap()]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    let found = if have == 1 { "was found" } else { "were found" };
    assert!(
        err.contains(&format!(
            "batch.num_gpus_per_actor = 1 with batch.num_actors = {want} needs {want} GPU(s), but {have} {found}"
        )),
        "{err}"
    );
    assert!(!err.contains("loading model"), "{err}");
}

#[test]
fn device_choices_are_checked_before_any_model_loads() {
    let c = Case::new();
    c.input(good(0).as_bytes());
    // "auto" runs on a GPU when there is one and stook was built for CUDA,
    // else on the CPU.
    let cfg = c.config("load_ms = 1", "device = \"auto\"");
    let o = c.stook(&["run", cfg.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let on = if gpus_here() > 0 && cfg!(feature = "cuda") {
        "model loads on cuda:"
    } else {
        "model loads on cpu"
    };
    assert!(stderr(&o).contains(on), "{}", stderr(&o));
    // A GPU index that is not there is refused, naming it.
    let missing = format!("cuda:{}", gpus_here());
    let cfg = c.config("load_ms = 1", &format!("device = \"{missing}\""));
    let o = c.stook(&["run", "--fresh", cfg.to_str().unwrap()]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("batch.device = \"{missing}\": no such GPU")),
        "{err}"
    );
    assert!(!err.contains("loading model"), "{err}");
    // Config errors name the key and what is expected.
    let cfg = c.config("load_ms = 1", "device = \"gpu\"");
    let err = stderr(&c.stook(&["validate", cfg.to_str().unwrap()]));
    assert!(err.contains("batch.device"), "{err}");
    assert!(
        err.contains("expected \"cpu\", \"cuda\", \"cuda:N\" or \"auto\", found \"gpu\""),
        "{err}"
    );
    let cfg = c.config("load_ms = 1", "device = \"cpu\"\nnum_gpus_per_actor = 1");
    let err = stderr(&c.stook(&["validate", cfg.to_str().unwrap()]));
    assert!(
        err.contains("batch.device: \"cpu\" with num_gpus_per_actor = 1"),
        "{err}"
    );
}

#[test]
fn config_problems_are_all_reported_with_their_keys() {
    let c = Case::new();
    c.input(good(0).as_bytes());
    let p = c.path("bad.toml");
    std::fs::write(
        &p,
        "[input]\npath = \"in.jsonl\"\nmax_line_bytes = \"lots\"\n[output]\npath = \"out\"\n[model]\nbackend = \"synthetic\"\n\
         [model.options]\nload_msec = 3\n[batch]\nsize = 0\ncompute = \"threads\"\n",
    )
    .unwrap();
    let o = c.stook(&["run", p.to_str().unwrap()]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("input.max_line_bytes: expected a size"),
        "{err}"
    );
    assert!(
        err.contains("batch.compute: unknown variant `threads`"),
        "{err}"
    );
    // model options are checked once the rest parses
    std::fs::write(
        &p,
        "[input]\npath = \"in.jsonl\"\n[output]\npath = \"out\"\n[model]\nbackend = \"synthetic\"\n[model.options]\nload_msec = 3\n",
    )
    .unwrap();
    let err = stderr(&c.stook(&["validate", p.to_str().unwrap()]));
    assert!(
        err.contains("model.options.load_msec: unknown field `load_msec`"),
        "{err}"
    );
    std::fs::write(
        &p,
        "[input]\npath = \"in.jsonl\"\n[output]\npath = \"out\"\n[model]\nbackend = \"bert\"\n",
    )
    .unwrap();
    let err = stderr(&c.stook(&["validate", p.to_str().unwrap()]));
    assert!(
        err.contains(
            "model.backend: unknown backend \"bert\", expected one of: echo, embedding, openai-http, python, sheaf, synthetic"
        ),
        "{err}"
    );
}

#[test]
fn a_missing_input_file_is_named() {
    let c = Case::new();
    let cfg = c.config("", "");
    let o = c.stook(&["run", cfg.to_str().unwrap()]);
    let err = stderr(&o);
    assert!(err.contains("in.jsonl: No such file or directory"), "{err}");
}

#[test]
fn backends_lists_each_backend_and_its_rows() {
    let o = Case::new().stook(&["backends"]);
    let out = String::from_utf8(o.stdout).unwrap();
    assert!(out.contains("echo\n"), "{out}");
    assert!(out.contains("synthetic\n"), "{out}");
    assert!(
        out.contains("\"text\": a string (required); \"id\": any JSON value (optional)"),
        "{out}"
    );
}

#[test]
fn the_kernel_check_prints_each_op_and_names_a_device_it_cannot_use() {
    let case = Case::new();
    let o = case.stook(&["bench", "kernels", "--device", "cpu"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8(o.stdout).unwrap();
    assert_eq!(
        out.lines().filter(|l| l.ends_with(" ok")).count(),
        21,
        "{out}"
    );
    let o = case.stook(&["bench", "kernels", "--device", "gpu"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("--device: expected cpu or cuda:N, found \"gpu\""),
        "{}",
        stderr(&o)
    );
    if !cfg!(feature = "cuda") {
        let o = case.stook(&["bench", "kernels", "--device", "cuda:0"]);
        assert!(!o.status.success());
        assert!(stderr(&o).contains("cuda:0: "), "{}", stderr(&o));
        assert!(
            stderr(&o).contains("built without --features cuda"),
            "{}",
            stderr(&o)
        );
    }
}

#[test]
fn a_rerun_resumes_and_an_output_directory_with_other_files_is_refused() {
    let c = Case::new();
    c.input((good(0) + &good(1)).as_bytes());
    let cfg = c.config("", "");
    assert!(c.stook(&["run", cfg.to_str().unwrap()]).status.success());
    let first = output_bytes(&c.path("out"));
    let again = c.stook(&["run", cfg.to_str().unwrap()]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(
        stderr(&again).contains("2 rows (2 resumed from earlier runs)"),
        "{}",
        stderr(&again)
    );
    assert_eq!(output_bytes(&c.path("out")), first);
    assert!(c
        .stook(&["run", "--fresh", cfg.to_str().unwrap()])
        .status
        .success());
    assert_eq!(output_bytes(&c.path("out")), first);
    std::fs::write(c.path("out").join("notes.txt"), "mine").unwrap();
    for args in [vec!["run"], vec!["run", "--fresh"]] {
        let mut args = args.clone();
        args.push(cfg.to_str().unwrap());
        let o = c.stook(&args);
        assert!(
            stderr(&o).contains("the output directory is not empty (it holds notes.txt)"),
            "{}",
            stderr(&o)
        );
    }
    assert!(c.path("out").join("notes.txt").exists());
}

#[test]
fn sigint_stops_cleanly_with_exit_130_and_only_complete_shards() {
    stops_cleanly(libc::SIGINT, 130);
}

#[test]
fn sigterm_stops_cleanly_like_the_first_ctrl_c_with_exit_143_and_resumes() {
    let c = stops_cleanly(libc::SIGTERM, 143);
    // The rerun finishes what is left.
    let o = c.stook(&["run", c.path("job.toml").to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let written = String::from_utf8(output_bytes(&c.path("out"))).unwrap();
    assert_eq!(written.lines().count(), 3000);
}

/// A job of 30 shards stopped by `signal` after 1.5 s: exit `code`, no
/// temporary file, only whole shards committed, in order.
fn stops_cleanly(signal: i32, code: i32) -> Case {
    let c = Case::new();
    let mut f = std::fs::File::create(c.path("in.jsonl")).unwrap();
    for i in 0..3000 {
        f.write_all(good(i).as_bytes()).unwrap();
    }
    drop(f);
    let cfg = c.config("batch_ms = 20", "size = 10\nnum_actors = 2");
    std::fs::write(
        &cfg,
        std::fs::read_to_string(&cfg).unwrap() + "[checkpoint]\nshard_rows = 100\n",
    )
    .unwrap();
    let child = Command::new(stook_bin())
        .args(["run", cfg.to_str().unwrap()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    // SAFETY: plain signal to our own child.
    unsafe { libc::kill(child.id() as i32, signal) };
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(code), "{}", stderr(&o));
    let out = c.path("out");
    assert!(temporaries(&out).is_empty(), "{:?}", temporaries(&out));
    assert!(!out.join("_SUCCESS").exists());
    let manifest = std::fs::read_to_string(out.join("_manifest.jsonl")).unwrap();
    let committed = manifest.lines().count() - 1; // after the header line
    assert!((1..30).contains(&committed), "{committed} shards");
    // Every committed part is whole: 100 rows each, in order from row 0.
    let written = String::from_utf8(output_bytes(&out)).unwrap();
    assert_eq!(written.lines().count(), committed * 100);
    for (i, line) in written.lines().enumerate() {
        assert!(line.starts_with(&format!("{{\"id\":{i},")), "{line}");
    }
    c
}

/// A store too small for one row alone used to pass `validate` and fail
/// the run (exit 1); `validate` now refuses it by key, with the figure the
/// run would have needed.
#[test]
fn absurd_values_a_budget_too_small_for_one_row_is_refused_by_validate() {
    let c = Case::new();
    let mut rows = String::from("{\"text\": \"short\"}\n\n");
    rows.push_str(&format!("{{\"text\": \"{}\"}}\n", "x".repeat(3000)));
    c.input(rows.as_bytes());
    let p = c.path("tiny.toml");
    let job = |budget: &str| {
        format!(
            "[input]\npath = \"in.jsonl\"\n[output]\npath = \"out\"\n[model]\nbackend = \"echo\"\n\
             [memory]\nobject_store = {budget:?}\n"
        )
    };
    std::fs::write(&p, job("4KiB")).unwrap();
    let o = c.stook(&["validate", p.to_str().unwrap()]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("memory.object_store: 4096 bytes cannot hold line 3 of "),
        "{err}"
    );
    let said = "in.jsonl alone: it needs ";
    assert!(err.contains(said), "{err}");
    let need: usize = err[err.find(said).unwrap() + said.len()..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // The run refuses the batch holding that row, which needs at least as
    // much (one row's need is a floor of its batch's).
    let o = c.stook(&["run", p.to_str().unwrap()]);
    let run_err = stderr(&o);
    let at = run_err.find(") needs ").expect("the batch's need") + ") needs ".len();
    let batch: usize = run_err[at..].split(' ').next().unwrap().parse().unwrap();
    assert!(batch >= need, "{run_err}");
    // With that much, the row fits alone.
    std::fs::write(&p, job(&need.to_string())).unwrap();
    let o = c.stook(&["validate", p.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn absurd_values_max_retries_and_empty_columns_are_refused_by_key() {
    let c = Case::new();
    c.input(good(0).as_bytes());
    let p = c.path("absurd.toml");
    std::fs::write(
        &p,
        "[input]\npath = \"in.jsonl\"\ncolumns = []\n[output]\npath = \"out\"\n[model]\n\
         backend = \"synthetic\"\n[batch]\nmax_retries = 4294967295\n",
    )
    .unwrap();
    let o = c.stook(&["validate", p.to_str().unwrap()]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("batch.max_retries: expected at most 1000, found 4294967295"),
        "{err}"
    );
    assert!(
        err.contains("input.columns: expected at least one column name"),
        "{err}"
    );
}

#[test]
fn unbounded_reads_a_config_that_never_ends_is_refused_not_read_whole() {
    let c = Case::new();
    let o = c.stook(&["validate", "/dev/zero"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("the config is larger than 1024 KiB: is this the right file?"),
        "{err}"
    );
    let bin = c.path("binary.toml");
    std::fs::write(&bin, b"[input]\npath = \"\xff\"\n").unwrap();
    let err = stderr(&c.stook(&["validate", bin.to_str().unwrap()]));
    assert!(err.contains("not UTF-8 text (invalid byte at 17)"), "{err}");
}

#[test]
fn panics_a_reader_that_goes_away_ends_stook_quietly() {
    use std::os::unix::process::ExitStatusExt;
    for args in [&["backends"][..], &["--help"][..]] {
        let mut child = Command::new(stook_bin())
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // The reader is gone before stook writes.
        drop(child.stdout.take());
        let o = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(
            o.status.success() || o.status.signal() == Some(libc::SIGPIPE),
            "{args:?}: {:?} {err}",
            o.status
        );
    }
}

/// An Arrow file whose record batch header points a buffer past the
/// batch's body (one byte of a pyarrow file changed): arrow-ipc panicked
/// slicing it ("internal: … stopped unexpectedly"); now refused, named.
#[test]
fn panics_a_corrupted_arrow_file_is_a_clear_error() {
    let c = Case::new();
    let input = c.path("in.arrow");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/corrupt-buffer.arrow");
    std::fs::copy(fixture, &input).unwrap();
    let cfg = c.path("job.toml");
    std::fs::write(
        &cfg,
        format!(
            "[input]\npath = {input:?}\n[output]\npath = {:?}\n[model]\nbackend = \"echo\"\n",
            c.path("out")
        ),
    )
    .unwrap();
    for cmd in ["run", "validate"] {
        let o = c.stook(&[cmd, cfg.to_str().unwrap()]);
        let err = stderr(&o);
        assert!(!o.status.success(), "{cmd}: {err}");
        assert!(
            !err.contains("panicked") && !err.contains("internal"),
            "{cmd}: {err}"
        );
        assert!(
            err.contains("in.arrow: record batch 0: its header points outside its body (the file is corrupt)"),
            "{cmd}: {err}"
        );
    }
}

#[test]
fn a_plain_run_deletes_no_user_file_that_only_looks_like_stooks() {
    let c = Case::new();
    c.input(good(0).as_bytes());
    let out = c.path("out");
    std::fs::create_dir_all(&out).unwrap();
    for name in [
        "part-00000-1b2c3d.snappy.parquet",
        "part-notes.txt",
        "_report_2025.pdf",
        ".notes.tmp",
    ] {
        let mut all: Vec<&str> = vec![name];
        // Each alone, then all together: each is refused, none deleted.
        if name == ".notes.tmp" {
            all = vec![
                "part-00000-1b2c3d.snappy.parquet",
                "part-notes.txt",
                "_report_2025.pdf",
                name,
            ];
        }
        for n in &all {
            std::fs::write(out.join(n), b"the user's").unwrap();
        }
        let cfg = c.config("", "");
        for args in [&["run"][..], &["run", "--fresh"][..]] {
            let mut a = args.to_vec();
            a.push(cfg.to_str().unwrap());
            let o = c.stook(&a);
            let err = stderr(&o);
            assert_eq!(o.status.code(), Some(1), "{a:?}: {err}");
            assert!(err.contains("the output directory is not empty"), "{err}");
            for n in &all {
                assert_eq!(
                    std::fs::read(out.join(n)).unwrap(),
                    b"the user's",
                    "{n} touched"
                );
            }
            // Nothing of stook's added either (not even its lock file).
            let mut here: Vec<String> = std::fs::read_dir(&out)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
                .collect();
            here.sort();
            let mut expect: Vec<String> = all.iter().map(|n| n.to_string()).collect();
            expect.sort();
            assert_eq!(here, expect, "{a:?}");
        }
        for n in &all {
            std::fs::remove_file(out.join(n)).unwrap();
        }
    }
}

#[test]
fn output_assemble_is_checked_against_the_input_and_the_output_directory() {
    let c = Case::new();
    let input = c.input(good(0).as_bytes());
    let before = std::fs::read(&input).unwrap();
    let cfg = c.config("", "");
    let base = std::fs::read_to_string(&cfg).unwrap();
    for (assemble, says) in [
        ("in.jsonl", "is the input or inside it"),
        ("./sub/../in.jsonl", "is the input or inside it"),
        ("out/_manifest.jsonl", "is inside the output directory"),
        ("out/all.jsonl", "is inside the output directory"),
    ] {
        std::fs::create_dir_all(c.path("sub")).unwrap();
        let text = base.replace(
            "path = \"out\"\n",
            &format!("path = \"out\"\nassemble = {assemble:?}\n"),
        );
        std::fs::write(&cfg, text).unwrap();
        for cmd in ["validate", "run"] {
            let o = c.stook(&[cmd, cfg.to_str().unwrap()]);
            let err = stderr(&o);
            assert_eq!(o.status.code(), Some(2), "{cmd} {assemble}: {err}");
            assert!(
                err.contains("output.assemble") && err.contains(says),
                "{err}"
            );
        }
        assert_eq!(std::fs::read(&input).unwrap(), before, "{assemble}");
    }
    // An output directory inside the input's place is refused too.
    let text = base.replace("path = \"out\"\n", "path = \"in.jsonl/out\"\n");
    std::fs::write(&cfg, text).unwrap();
    let err = stderr(&c.stook(&["run", cfg.to_str().unwrap()]));
    assert!(
        err.contains("output.path") && err.contains("is the input or inside it"),
        "{err}"
    );
}

#[test]
fn merge_and_assemble_never_write_through_a_symlink() {
    let c = Case::new();
    c.input(good(0).as_bytes());
    let cfg = c.config("", "");
    let base = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        base.replace(
            "path = \"out\"\n",
            "path = \"out\"\nassemble = \"all.jsonl\"\n",
        ),
    )
    .unwrap();
    // Someone else's file, and a link to it where stook writes its
    // temporary copy of the assembled output.
    let victim = c.path("victim.txt");
    std::fs::write(&victim, b"keep me").unwrap();
    std::os::unix::fs::symlink(&victim, c.path(".all.jsonl.tmp")).unwrap();
    let o = c.stook(&["run", cfg.to_str().unwrap()]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains(".all.jsonl.tmp is a symlink"), "{err}");
    assert_eq!(std::fs::read(&victim).unwrap(), b"keep me");
    assert!(!c.path("all.jsonl").exists());
    // The link is not stook's either: left where it was.
    assert!(c.path(".all.jsonl.tmp").is_symlink());
}

/// `n` JSON rows of about 1 KiB each.
fn rows_of_a_kib(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "{{\"id\": {i}, \"text\": \"row {i} {}\"}}\n",
                "x".repeat(1000)
            )
        })
        .collect()
}

/// A mapped input truncated by another process during the run used to
/// kill stook with SIGBUS (no message, `.tmp` files left). Now the run
/// stops with an error naming the file, leaves no temporary file and keeps
/// its committed shards, and a rerun over the restored file resumes to the
/// same bytes as a run that was never disturbed.
#[test]
fn sigbus_an_input_truncated_while_mapped_is_a_clear_error_and_resumes() {
    let c = Case::new();
    // 3,000 rows of about 1 KiB: 750 pages, far more than the first shards read.
    let rows = rows_of_a_kib(3000);
    let input = c.input(rows.as_bytes());
    let modified = std::fs::metadata(&input).unwrap().modified().unwrap();
    let cfg = c.config("batch_ms = 20", "size = 10\nnum_actors = 2");
    std::fs::write(
        &cfg,
        std::fs::read_to_string(&cfg).unwrap() + "[checkpoint]\nshard_rows = 100\n",
    )
    .unwrap();
    let mut child = Command::new(stook_bin())
        .args(["run", cfg.to_str().unwrap()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = c.path("out");
    let manifest = out.join("_manifest.jsonl");
    let committed =
        || std::fs::read_to_string(&manifest).map_or(0, |m| m.lines().count().saturating_sub(1));
    let start = std::time::Instant::now();
    while committed() < 1 {
        assert!(start.elapsed().as_secs() < 60, "no shard committed in 60 s");
        assert!(child.try_wait().unwrap().is_none(), "stook ended early");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    std::fs::File::options()
        .write(true)
        .open(&input)
        .unwrap()
        .set_len(100)
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{:?}: {err}", o.status);
    assert!(
        err.contains("in.jsonl") && err.contains("the file changed while stook was reading it"),
        "{err}"
    );
    assert!(
        !err.contains("panicked") && !err.contains("internal"),
        "{err}"
    );
    assert!(temporaries(&out).is_empty(), "{:?}", temporaries(&out));
    assert!(!out.join("_SUCCESS").exists());
    let kept = committed();
    assert!((1..30).contains(&kept), "{kept} shards");
    // Restored as `cp -p` would: the rerun resumes and completes.
    std::fs::write(&input, &rows).unwrap();
    let f = std::fs::File::options().write(true).open(&input).unwrap();
    f.set_modified(modified).unwrap();
    drop(f);
    let o = c.stook(&["run", cfg.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("resum"), "{}", stderr(&o));
    let written = String::from_utf8(output_bytes(&out)).unwrap();
    assert_eq!(written.lines().count(), 3000);
    for (i, line) in written.lines().enumerate() {
        assert!(line.starts_with(&format!("{{\"id\":{i},")), "{line}");
    }
}

/// A tmpfs of `size` mounted on `dir` (as root), unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let o = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "this test fills a small disk: it mounts a tmpfs, which needs root: {}",
            stderr(&o)
        );
        Tmpfs(dir.to_path_buf())
    }

    fn resize(&self, size: &str) {
        let o = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).output();
    }
}

/// Finding 7: a disk that fills during the run. The run stops with an
/// error naming the file it could not write and why, leaves no temporary
/// file, keeps its committed shards whole, and once there is room the
/// rerun resumes to the complete output.
#[test]
fn full_disk_the_run_stops_naming_the_file_leaves_no_temporary_and_resumes() {
    let c = Case::new();
    // About 3 MB of output in shards of about 100 KB, into 256 KiB.
    let rows = rows_of_a_kib(3000);
    c.input(rows.as_bytes());
    let out = c.path("out");
    let disk = Tmpfs::mount(&out, "256k");
    let cfg = c.path("job.toml");
    std::fs::write(
        &cfg,
        "[input]\npath = \"in.jsonl\"\n[output]\npath = \"out\"\n[model]\nbackend = \"echo\"\n\
         [batch]\nsize = 10\n[checkpoint]\nshard_rows = 100\n",
    )
    .unwrap();
    let o = c.stook(&["run", cfg.to_str().unwrap()]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    assert!(
        err.contains(out.to_str().unwrap()),
        "names no file in out/: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(temporaries(&out).is_empty(), "{:?}", temporaries(&out));
    assert!(!out.join("_SUCCESS").exists());
    let manifest = std::fs::read_to_string(out.join("_manifest.jsonl")).unwrap();
    let committed = manifest.lines().count() - 1;
    assert!(committed < 30, "{committed} shards");
    let written = String::from_utf8(output_bytes(&out)).unwrap();
    assert_eq!(written.lines().count(), committed * 100);
    disk.resize("16m");
    let o = c.stook(&["run", cfg.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let written = String::from_utf8(output_bytes(&out)).unwrap();
    assert_eq!(written.lines().count(), 3000);
    for (i, line) in written.lines().enumerate() {
        assert!(line.starts_with(&format!("{{\"id\": {i},")), "{i}");
    }
}
