//! The `openai-http` backend against a real server process on 127.0.0.1:
//! tests/openai_server.py, an OpenAI-compatible embeddings server (its own
//! MiniLM in numpy; nothing shared with stook), killed, restarted and made
//! to answer 429. Needs the model and .venv-arrow (numpy, tokenizers,
//! safetensors, openai), which scripts/test.sh provides; fails, saying
//! so, without them.

mod common;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::openai::*;
use common::*;
use serde_json::{json, Value};

/// A server process, killed when dropped.
struct Server {
    child: Child,
    port: u16,
    args: Vec<String>,
}

impl Server {
    fn start(port: u16, args: &[&str]) -> Server {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let child = Command::new(python())
            .arg(root().join("tests/openai_server.py"))
            .arg(model_dir())
            .arg(port.to_string())
            .args(&args)
            // One BLAS thread: the server's request threads share the cores.
            .env("OPENBLAS_NUM_THREADS", "1")
            .env("OMP_NUM_THREADS", "1")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut s = Server { child, port, args };
        s.wait_ready();
        s
    }

    /// Waits until the server accepts connections (it binds once its
    /// model is loaded).
    fn wait_ready(&mut self) {
        let t = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                self.child.try_wait().unwrap().is_none(),
                "tests/openai_server.py exited (are numpy, tokenizers and safetensors in \
                 .venv-arrow? scripts/pyarrow-env.sh installs them)"
            );
            assert!(t.elapsed() < Duration::from_secs(60), "server not ready");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn restart(&mut self) {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let fresh = Server::start(self.port, &args);
        let mut old = std::mem::replace(self, fresh);
        old.kill();
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A job of `openai-http` over `input` into `dir/out`.
fn http_job(dir: &Path, input: &Path, out: &str, base_url: &str, options: &str) -> PathBuf {
    let cfg = dir.join(format!("{out}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "[input]\npath = {input:?}\n[output]\npath = {:?}\n[model]\nbackend = \"openai-http\"\n\
             [model.options]\nbase_url = {base_url:?}\n{options}\n[batch]\nsize = 8\nnum_actors = 2\n",
            dir.join(out)
        ),
    )
    .unwrap();
    cfg
}

fn local_job(dir: &Path, input: &Path, out: &str, schema: &str) -> PathBuf {
    let cfg = dir.join(format!("{out}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "[input]\npath = {input:?}\n[output]\npath = {:?}\n[model]\nbackend = \"embedding\"\n\
             [model.options]\npath = {:?}\nschema = {schema:?}\n[batch]\nsize = 16\n",
            dir.join(out),
            model_dir()
        ),
    )
    .unwrap();
    cfg
}

fn run_ok(cfg: &Path, env: &[(&str, &str)]) -> String {
    let o = Command::new(stook_bin())
        .arg("run")
        .arg(cfg)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "{}: {err}", cfg.display());
    err
}

fn report(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("_report.json")).unwrap()).unwrap()
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let n = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (n(a) * n(b))
}

#[test]
fn forwarded_lines_get_the_servers_answers_and_vectors_agree_with_the_local_backend() {
    let dir = tempdir();
    let d = dir.path();
    let key = "sk-test-7f3a9c";
    let log = d.join("served.log");
    let server = Server::start(free_port(), &["--key", key, "--log", log.to_str().unwrap()]);
    let input = requests(d);
    run_ok(&local_job(d, &input, "local", "openai"), &[]);
    let options = "api_key_env = \"STOOK_TEST_KEY\"\nmax_concurrency = 4";
    let cfg = http_job(d, &input, "http", &server.url(), options);
    let said = run_ok(&cfg, &[("STOOK_TEST_KEY", key)]);
    let summary = check(
        &input,
        &d.join("http/part-00000.jsonl"),
        &[
            "--forwarded",
            "--same-as",
            d.join("local/part-00000.jsonl").to_str().unwrap(),
        ],
    );
    assert_eq!(summary["chat"], 1, "{summary}");
    assert!(summary["compared"].as_u64().unwrap() >= 200, "{summary}");
    let agree = summary["lowest_agreement"].as_f64().unwrap();
    assert!(
        agree >= 0.9999,
        "lowest cosine to the local backend {agree}"
    );
    assert!(
        summary["lowest_cosine"].as_f64().unwrap() >= 0.9999,
        "{summary}"
    );
    assert_eq!(
        report(&d.join("http"))["counters"]["error_lines"],
        summary["error_lines"]
    );
    // The key goes to the server only.
    assert!(!said.contains(key));
    for f in std::fs::read_dir(d.join("http")).unwrap() {
        let bytes = std::fs::read(f.unwrap().path()).unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains(key));
    }

    // Without the key, or with a wrong one: refused before any row is sent.
    let o = stook(&["run", cfg.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("model.options.api_key_env") && err.contains("STOOK_TEST_KEY is not set"),
        "{err}"
    );
    let o = Command::new(stook_bin())
        .args(["run", "--fresh", cfg.to_str().unwrap()])
        .env("STOOK_TEST_KEY", "wrong")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("/v1/models answered 401"),
        "{err}"
    );

    // The text schema: {"id", "text"} rows, several texts a request.
    let texts = d.join("texts.jsonl");
    let rows: Vec<String> = std::fs::read_to_string(root().join("tests/fixtures/sentences.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| !l.contains("\"text\": \"\""))
        .map(str::to_string)
        .collect();
    std::fs::write(&texts, rows.join("\n") + "\n").unwrap();
    run_ok(&local_job(d, &texts, "local-text", "text"), &[]);
    let options =
        "schema = \"text\"\nmodel = \"m\"\ntexts_per_request = 5\napi_key_env = \"STOOK_TEST_KEY\"";
    let before = served(&log);
    run_ok(
        &http_job(d, &texts, "http-text", &server.url(), options),
        &[("STOOK_TEST_KEY", key)],
    );
    // Batches of 8 rows: a request of 5 texts and one of 3 each, none sent
    // again text by text.
    let requests = served(&log) - before;
    let expected: usize = rows.chunks(8).map(|b| b.len().div_ceil(5)).sum();
    assert_eq!(requests, expected, "embeddings requests served");
    let read = |out: &str| -> Vec<(Value, Vec<f64>)> {
        String::from_utf8(output(&d.join(out)))
            .unwrap()
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                let e = v["embedding"].as_array().unwrap();
                (
                    v["id"].clone(),
                    e.iter().map(|x| x.as_f64().unwrap()).collect(),
                )
            })
            .collect()
    };
    let (local, http) = (read("local-text"), read("http-text"));
    assert_eq!(local.len(), rows.len());
    assert_eq!(http.len(), rows.len());
    for ((id_l, v_l), (id_h, v_h)) in local.iter().zip(&http) {
        assert_eq!(id_l, id_h);
        let c = cosine(v_l, v_h);
        assert!(c >= 0.9999, "id {id_l}: cosine {c}");
    }
}

/// `n` requests of one short text each (the test server's model is
/// numpy's: a few milliseconds a short text).
fn single_texts(dir: &Path, n: usize) -> PathBuf {
    let sentences = sentences();
    let lines: Vec<String> = (0..n)
        .map(|i| {
            let words = sentences[i % sentences.len()]["text"].as_str().unwrap();
            let short: Vec<&str> = words.split_whitespace().take(8).collect();
            let text = format!("{} ({i})", short.join(" "));
            embeddings(&format!("k-{i}"), json!({"model": "m", "input": text}))
        })
        .collect();
    let path = dir.join("single.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

/// Lines the server has answered, from its --log.
fn served(log: &Path) -> usize {
    std::fs::read_to_string(log).map_or(0, |s| s.lines().count())
}

fn wait_served(log: &Path, n: usize) {
    let t = Instant::now();
    while served(log) < n {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "the server got no work"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts `stook run cfg` (stderr to `errors`) and returns once the
/// server has answered `n` more requests.
fn run_until_served(cfg: &Path, errors: &Path, log: &Path, n: usize) -> Child {
    let before = served(log);
    let job = Command::new(stook_bin())
        .args(["run", cfg.to_str().unwrap()])
        .stderr(std::fs::File::create(errors).unwrap())
        .spawn()
        .unwrap();
    wait_served(log, before + n);
    job
}

#[test]
fn a_server_killed_and_restarted_mid_job_costs_no_line_and_duplicates_none() {
    let dir = tempdir();
    let d = dir.path();
    let input = single_texts(d, 240);
    let log = d.join("served.log");
    let mut server = Server::start(free_port(), &["--log", log.to_str().unwrap()]);
    let options = "max_concurrency = 2";
    run_ok(&http_job(d, &input, "whole", &server.url(), options), &[]);
    let whole = output(&d.join("whole"));
    assert_eq!(String::from_utf8_lossy(&whole).lines().count(), 240);

    // Killed mid-job and back within the retries: the run goes on.
    let cfg = http_job(d, &input, "restarted", &server.url(), options);
    let mut job = run_until_served(&cfg, &d.join("restarted.err"), &log, 40);
    server.kill();
    std::thread::sleep(Duration::from_millis(500));
    server.restart();
    assert!(
        job.wait().unwrap().success(),
        "{}",
        std::fs::read_to_string(d.join("restarted.err")).unwrap()
    );
    assert_eq!(
        output(&d.join("restarted")),
        whole,
        "every line once, in order, the same bytes"
    );

    // Killed and not back: the run stops, keeping what it committed; the
    // rerun resumes.
    let options = "max_concurrency = 2\nmax_retries = 1\n[checkpoint]\nshard_rows = 16";
    let cfg = http_job(d, &input, "stopped", &server.url(), options);
    let mut job = run_until_served(&cfg, &d.join("stopped.err"), &log, 100);
    server.kill();
    let status = job.wait().unwrap();
    let err = std::fs::read_to_string(d.join("stopped.err")).unwrap();
    assert!(!status.success(), "{err}");
    assert!(err.contains("run again to resume"), "{err}");
    server.restart();
    run_ok(&cfg, &[]);
    assert!(report(&d.join("stopped"))["rows_resumed"].as_u64() > Some(0));
    assert_eq!(output(&d.join("stopped")), whole);
}

#[test]
fn busy_answers_are_retried_and_a_line_that_stays_busy_is_its_error_line() {
    let dir = tempdir();
    let d = dir.path();
    let input = single_texts(d, 40);
    let calm = Server::start(free_port(), &[]);
    run_ok(&http_job(d, &input, "calm", &calm.url(), ""), &[]);
    let busy = Server::start(free_port(), &["--busy-every", "3"]);
    run_ok(&http_job(d, &input, "busy", &busy.url(), ""), &[]);
    assert_eq!(output(&d.join("busy")), output(&d.join("calm")));

    let always = Server::start(free_port(), &["--busy-every", "1"]);
    let said = run_ok(
        &http_job(d, &input, "always", &always.url(), "max_retries = 1"),
        &[],
    );
    assert!(said.contains("40 error lines"), "{said}");
    for line in String::from_utf8(output(&d.join("always")))
        .unwrap()
        .lines()
    {
        let v: Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["response"]["status_code"], 429, "{line}");
        assert_eq!(
            v["response"]["body"]["error"]["code"], "rate_limit_exceeded",
            "{line}"
        );
        assert!(v["error"].is_null());
    }
}
