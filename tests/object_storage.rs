//! Object storage: inputs read from, and outputs written to, a real
//! S3-compatible server (moto's, from PyPI, on 127.0.0.1; see
//! tests/common/s3.rs), compared byte for byte with the same jobs run on
//! local files.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::openai::python;
use common::{s3, stook_bin, tempdir, write_rows};

/// A job config over `input` writing `format` parts to `out` (paths or
/// URLs).
fn config(dir: &Path, name: &str, input: &str, out: &str, format: &str) -> PathBuf {
    config_with(dir, name, input, out, format, "", "")
}

/// [`config`] with more `[output]` keys and `[model.options]`.
fn config_with(
    dir: &Path,
    name: &str,
    input: &str,
    out: &str,
    format: &str,
    output: &str,
    options: &str,
) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(
        &p,
        format!(
            "[input]\npath = {input:?}\n[output]\npath = {out:?}\nformat = {format:?}\n{output}\n\
             [model]\nbackend = \"synthetic\"\n[model.options]\n{options}\n\
             [batch]\nsize = 256\nnum_actors = 2\n[checkpoint]\nshard_rows = 2000\n"
        ),
    )
    .unwrap();
    p
}

/// `stook ARGS` against the test store on `port`.
fn stook_at(port: u16, args: &[&str]) -> Output {
    Command::new(stook_bin())
        .args(args)
        .envs(s3::env(port))
        .output()
        .unwrap()
}

fn stook(args: &[&str]) -> Output {
    stook_at(s3::port(), args)
}

fn ok(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "stook failed: {err}");
    err
}

/// Writes `jsonl` as Parquet at `target` (pyarrow), row groups of `group`;
/// as an Arrow IPC file of batches of `group` rows when `target` ends in
/// `.arrow`.
fn to_parquet(jsonl: &Path, target: &Path, group: usize) {
    let code = format!(
        "import pyarrow as pa, pyarrow.json as j, pyarrow.parquet as pq\n\
         t = j.read_json({jsonl:?})\n\
         if {target:?}.endswith('.arrow'):\n\
         \x20   with pa.ipc.new_file({target:?}, t.schema) as w:\n\
         \x20       for b in t.to_batches(max_chunksize={group}): w.write_batch(b)\n\
         else:\n\
         \x20   pq.write_table(t, {target:?}, row_group_size={group})\n"
    );
    let s = Command::new(python()).args(["-c", &code]).status().unwrap();
    assert!(s.success());
}

/// The rows of a local run of `input` (same options), for comparison.
fn local_run(dir: &Path, input: &Path, format: &str) -> Vec<u8> {
    let name = input.file_name().unwrap().to_string_lossy();
    let out = dir.join(format!("local-{name}-{format}"));
    let cfg = config(
        dir,
        "local.toml",
        input.to_str().unwrap(),
        out.to_str().unwrap(),
        format,
    );
    ok(&stook(&["run", cfg.to_str().unwrap()]));
    common::output_bytes(&out)
}

#[test]
fn jsonl_gzip_zstd_parquet_and_arrow_inputs_from_a_bucket_give_a_local_runs_bytes() {
    let dir = tempdir();
    let input = write_rows(dir.path(), "in.jsonl", 9_000);
    let expected = local_run(dir.path(), &input, "jsonl");
    s3::make_bucket("inputs");
    s3::upload(&input, "s3://inputs/rows/in.jsonl");
    let gz = dir.path().join("in.jsonl.gz");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut enc, &std::fs::read(&input).unwrap()).unwrap();
    std::fs::write(&gz, enc.finish().unwrap()).unwrap();
    s3::upload(&gz, "s3://inputs/rows/in.jsonl.gz");
    let zst = dir.path().join("in.jsonl.zst");
    std::fs::write(
        &zst,
        zstd::encode_all(&std::fs::read(&input).unwrap()[..], 3).unwrap(),
    )
    .unwrap();
    s3::upload(&zst, "s3://inputs/rows/in.jsonl.zst");
    // Parquet: one file, and a prefix of two (read in name order).
    let pq = dir.path().join("in.parquet");
    to_parquet(&input, &pq, 1_000);
    s3::upload(&pq, "s3://inputs/rows/in.parquet");
    let text = std::fs::read_to_string(&input).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    for (i, half) in [&lines[..4_000], &lines[4_000..]].iter().enumerate() {
        let j = dir.path().join(format!("half-{i}.jsonl"));
        std::fs::write(&j, half.join("\n") + "\n").unwrap();
        let p = dir.path().join(format!("half-{i}.parquet"));
        to_parquet(&j, &p, 700);
        s3::upload(&p, &format!("s3://inputs/table/half-{i}.parquet"));
    }
    let expected_pq = local_run(dir.path(), &pq, "jsonl");
    let arrow = dir.path().join("in.arrow");
    to_parquet(&input, &arrow, 1_500);
    s3::upload(&arrow, "s3://inputs/rows/in.arrow");
    let expected_arrow = local_run(dir.path(), &arrow, "jsonl");
    for (n, url, want) in [
        (0, "s3://inputs/rows/in.jsonl", &expected),
        (1, "s3://inputs/rows/in.jsonl.gz", &expected),
        (2, "s3://inputs/rows/in.jsonl.zst", &expected),
        (3, "s3://inputs/rows/in.parquet", &expected_pq),
        (4, "s3://inputs/table/", &expected_pq),
        (5, "s3://inputs/rows/in.arrow", &expected_arrow),
    ] {
        let out = dir.path().join(format!("out-{n}"));
        let cfg = config(dir.path(), "job.toml", url, out.to_str().unwrap(), "jsonl");
        let err = ok(&stook(&["run", cfg.to_str().unwrap()]));
        assert!(
            common::output_bytes(&out) == *want,
            "{url}: output differs from the local run's\n{err}"
        );
    }
}

#[test]
fn a_missing_bucket_or_object_is_named_before_any_model_loads() {
    let dir = tempdir();
    s3::make_bucket("present");
    for (url, says) in [
        ("s3://no-such-bucket/in.jsonl", "no-such-bucket"),
        ("s3://present/missing.jsonl", "missing.jsonl"),
    ] {
        let out = dir.path().join("out");
        let cfg = config(dir.path(), "job.toml", url, out.to_str().unwrap(), "jsonl");
        for cmd in ["validate", "run"] {
            let o = stook(&[cmd, cfg.to_str().unwrap()]);
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(!o.status.success(), "{cmd} {url} succeeded");
            assert!(err.contains(says), "{cmd} {url}: {err}");
            assert!(!err.contains("panicked"), "{err}");
        }
    }
    // The output: `validate` lists and writes to the prefix.
    let input = write_rows(dir.path(), "in.jsonl", 10);
    for (url, fine) in [
        ("s3://no-such-out-bucket/out", false),
        ("s3://present/out", true),
    ] {
        let cfg = config(
            dir.path(),
            "job.toml",
            input.to_str().unwrap(),
            url,
            "jsonl",
        );
        let o = stook(&["validate", cfg.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.success(), fine, "{url}: {err}");
        if !fine {
            assert!(err.contains("no-such-out-bucket"), "{err}");
        }
    }
    // The probe is gone: the prefix holds nothing.
    assert!(s3::names("s3://present/out").is_empty());
}

#[test]
fn throttling_is_waited_out_and_the_output_is_unchanged() {
    let dir = tempdir();
    let input = write_rows(dir.path(), "in.jsonl", 6_000);
    let expected = local_run(dir.path(), &input, "jsonl");
    s3::make_bucket("throttled");
    s3::upload(&input, "s3://throttled/in.jsonl");
    let count = dir.path().join("refused");
    let proxy = s3::throttling_proxy(3, &count);
    // From the bucket to a local directory, and to the bucket.
    let out = dir.path().join("out");
    for (n, target) in [(0, out.to_str().unwrap()), (1, "s3://throttled/out")] {
        let cfg = config(
            dir.path(),
            &format!("job-{n}.toml"),
            "s3://throttled/in.jsonl",
            target,
            "jsonl",
        );
        ok(&stook_at(proxy, &["run", cfg.to_str().unwrap()]));
    }
    let refused: u32 = std::fs::read_to_string(&count).unwrap().parse().unwrap();
    assert!(refused >= 5, "the proxy refused {refused} requests");
    assert!(common::output_bytes(&out) == expected);
    assert!(s3::output_bytes("s3://throttled/out") == expected);
}

/// The local run's part files, by name.
fn local_parts(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("part-"))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|n| {
            let data = std::fs::read(dir.join(&n)).unwrap();
            (n, data)
        })
        .collect()
}

#[test]
fn jsonl_and_parquet_parts_in_a_bucket_equal_a_local_runs_files() {
    let dir = tempdir();
    let input = write_rows(dir.path(), "in.jsonl", 7_000);
    s3::make_bucket("outputs");
    // The third: parts over 8 MiB, uploaded in several pieces (multipart).
    for (case, format, options) in [
        ("jsonl", "jsonl", ""),
        ("parquet", "parquet", ""),
        ("large", "jsonl", "output_bytes = 5000"),
    ] {
        let local = dir.path().join(format!("local-{case}"));
        let cfg = config_with(
            dir.path(),
            "local.toml",
            input.to_str().unwrap(),
            local.to_str().unwrap(),
            format,
            "",
            options,
        );
        ok(&stook(&["run", cfg.to_str().unwrap()]));
        let url = format!("s3://outputs/{case}");
        let staging = dir.path().join(format!("staging-{case}"));
        let cfg = config_with(
            dir.path(),
            "job.toml",
            input.to_str().unwrap(),
            &url,
            format,
            &if case == "jsonl" {
                format!(
                    "assemble = \"s3://outputs/all.jsonl\"\nstaging = {:?}",
                    staging.to_str().unwrap()
                )
            } else {
                format!("staging = {:?}", staging.to_str().unwrap())
            },
            options,
        );
        ok(&stook(&["run", cfg.to_str().unwrap()]));
        let want = local_parts(&local);
        let names = s3::names(&url);
        let parts: Vec<&String> = names.iter().filter(|n| n.starts_with("part-")).collect();
        assert_eq!(parts.len(), want.len(), "{format}: {names:?}");
        for (name, data) in &want {
            assert!(
                s3::download(&format!("{url}/{name}")) == *data,
                "{format}: {name} differs from the local run's"
            );
        }
        for marker in ["_SUCCESS", "_manifest.jsonl", "_report.json"] {
            assert!(
                names.iter().any(|n| n == marker),
                "{format}: no {marker} in {names:?}"
            );
        }
        if case == "large" {
            assert!(want[0].1.len() > 8 << 20, "{} bytes", want[0].1.len());
        }
        if case == "jsonl" {
            assert!(s3::download("s3://outputs/all.jsonl") == common::output_bytes(&local));
        }
        // Uploaded parts leave the staging directory.
        let staged: Vec<String> = std::fs::read_dir(&staging)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .filter(|n| n.starts_with("part-"))
            .collect();
        assert!(staged.is_empty(), "{staged:?}");
        // A part's final name is written once: a create-only PUT of a
        // name that exists is refused by the store.
        let first = s3::location(&format!("{url}/{}", want[0].0));
        let again = first.put(b"again".to_vec().into(), true).unwrap_err();
        assert_eq!(again.kind(), std::io::ErrorKind::AlreadyExists, "{again}");
        assert!(s3::download(&format!("{url}/{}", want[0].0)) == want[0].1);
        // `stook status` and `stook merge` read the bucket's manifests
        // through a staging directory of their own, gone when they end.
        let tmp = dir.path().join(format!("tmp-{case}"));
        std::fs::create_dir_all(&tmp).unwrap();
        for cmd in ["status", "merge"] {
            let o = Command::new(stook_bin())
                .args([cmd, cfg.to_str().unwrap()])
                .envs(s3::env(s3::port()))
                .env("TMPDIR", &tmp)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&o.stdout).to_string()
                + &String::from_utf8_lossy(&o.stderr);
            assert!(o.status.success(), "{cmd}: {text}");
            assert!(text.contains(&url), "{cmd}: {text}");
            let left: Vec<_> = std::fs::read_dir(tmp.join("stook-staging"))
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert!(left.is_empty(), "{cmd} left {left:?}");
        }
    }
}

/// A local run of `input` to JSON Lines with `[model.options]` `options`:
/// its output directory.
fn local_out(dir: &Path, input: &Path, options: &str) -> PathBuf {
    let local = dir.join("local");
    let cfg = config_with(
        dir,
        "local.toml",
        input.to_str().unwrap(),
        local.to_str().unwrap(),
        "jsonl",
        "",
        options,
    );
    ok(&stook(&["run", cfg.to_str().unwrap()]));
    local
}

/// Starts `stook run CFG ARGS` against the test store.
fn spawn(cfg: &Path, args: &[&str]) -> Child {
    Command::new(stook_bin())
        .args(["run", cfg.to_str().unwrap()])
        .args(args)
        .envs(s3::env(s3::port()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits until at least `parts` part objects are under `url` (or `child`
/// ends), then SIGKILLs `child`; whether it was killed.
fn kill_after(mut child: Child, url: &str, parts: usize) -> bool {
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        let n = s3::names(url)
            .iter()
            .filter(|n| n.starts_with("part-"))
            .count();
        if n >= parts {
            // SAFETY: a signal to our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
            let o = child.wait_with_output().unwrap();
            return o.status.code().is_none();
        }
        assert!(start.elapsed() < Duration::from_secs(120), "no progress");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_job_killed_three_times_resumes_to_a_local_runs_bytes() {
    let dir = tempdir();
    let input = write_rows(dir.path(), "in.jsonl", 30_000);
    s3::make_bucket("killed");
    s3::upload(&input, "s3://killed/in.jsonl");
    let slow = "batch_ms = 15";
    let local = local_out(dir.path(), &input, slow);
    let url = "s3://killed/out";
    let cfg = config_with(
        dir.path(),
        "job.toml",
        "s3://killed/in.jsonl",
        url,
        "jsonl",
        "",
        slow,
    );
    let mut killed = 0;
    for parts in [2, 5, 9] {
        killed += usize::from(kill_after(spawn(&cfg, &[]), url, parts));
    }
    assert_eq!(killed, 3, "every run was to be killed");
    // Neither a recorded part damaged in the bucket nor an unrecorded one
    // (as a run killed between a part's upload and its manifest's leaves)
    // is trusted: both are redone.
    let garbage = b"{\"not\": \"stook's\"}\n";
    for part in ["part-00000.jsonl", "part-00014.jsonl"] {
        s3::location(&format!("{url}/{part}"))
            .put(garbage.to_vec().into(), false)
            .unwrap();
    }
    let o = stook(&["run", cfg.to_str().unwrap()]);
    let err = ok(&o);
    assert!(err.contains("resumed"), "{err}");
    assert!(s3::output_bytes(url) == common::output_bytes(&local));
    let report: serde_json::Value =
        serde_json::from_slice(&s3::download(&format!("{url}/_report.json"))).unwrap();
    // Nine parts were committed before the last kill; the damaged one
    // was redone in this run.
    assert!(
        report["rows_resumed"].as_u64().unwrap() >= 8 * 2000,
        "{report}"
    );
    let parts = report["parts"].as_array().unwrap();
    assert!(parts.iter().any(|p| p == "part-00000.jsonl"), "{report}");
}

#[test]
fn four_workers_write_one_prefix_one_killed_and_rerun_then_merged() {
    let dir = tempdir();
    let input = write_rows(dir.path(), "in.jsonl", 24_000);
    let slow = "batch_ms = 10";
    let local = local_out(dir.path(), &input, slow);
    s3::make_bucket("split");
    s3::upload(&input, "s3://split/in.jsonl");
    let url = "s3://split/out";
    let cfg = config_with(
        dir.path(),
        "job.toml",
        "s3://split/in.jsonl",
        url,
        "jsonl",
        "assemble = \"s3://split/all.jsonl\"",
        slow,
    );
    let workers: Vec<Child> = [0, 1, 3]
        .iter()
        .map(|i| spawn(&cfg, &["--shard", &format!("{i}/4")]))
        .collect();
    // Worker 2 is killed once it has a part in the bucket, then run again.
    let killed = kill_after(spawn(&cfg, &["--shard", "2/4"]), url, 1);
    for w in workers {
        let o = w.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    assert!(killed, "worker 2 ended before it could be killed");
    let o = stook(&["status", cfg.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    assert!(text.contains(url) && text.contains("worker 2/4"), "{text}");
    let refused = stook(&["merge", cfg.to_str().unwrap()]);
    assert!(
        !refused.status.success(),
        "merge went ahead with worker 2's shards missing"
    );
    ok(&stook(&["run", cfg.to_str().unwrap(), "--shard", "2/4"]));
    ok(&stook(&["merge", cfg.to_str().unwrap()]));
    assert!(s3::download("s3://split/all.jsonl") == common::output_bytes(&local));
    assert!(s3::output_bytes(url) == common::output_bytes(&local));
    assert!(s3::names(url).iter().any(|n| n == "_SUCCESS"));
}
