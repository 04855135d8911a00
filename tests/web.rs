//! examples/actix_web_jobs.rs, driven with real HTTP requests on loopback:
//! a bad config body (400 with the errors by key), a job run to the end, a
//! job cancelled midway, an unknown job.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// The example's binary, which `cargo test` builds beside stook's.
fn example_bin() -> PathBuf {
    let bin = stook_bin();
    let p = bin.parent().unwrap().join("examples/actix_web_jobs");
    assert!(
        p.exists(),
        "{} is missing: `cargo test` builds it (cargo build --examples)",
        p.display()
    );
    p
}

struct Service {
    child: Child,
    addr: String,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &Path) -> Service {
    let mut child = Command::new(example_bin())
        .arg("127.0.0.1:0")
        .current_dir(dir)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
        .to_string();
    Service { child, addr }
}

/// One request; the status and the body as JSON.
fn request(s: &Service, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
    let mut c = TcpStream::connect(&s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        c,
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        s.addr,
        body.len()
    )
    .unwrap();
    let mut text = String::new();
    c.read_to_string(&mut text).unwrap();
    let status: u16 = text[9..12].parse().unwrap();
    let (_, body) = text.split_once("\r\n\r\n").unwrap();
    (
        status,
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
}

fn config(input: &Path, out: &Path, options: &str, batch: &str) -> String {
    format!(
        "[input]\npath = {input:?}\n[output]\npath = {out:?}\n[model]\nbackend = \"synthetic\"\n\
         [model.options]\n{options}\n[batch]\n{batch}\n[checkpoint]\nshard_rows = 2000\n"
    )
}

/// Polls a job until it leaves `running`.
fn settle(s: &Service, id: u64) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = request(s, "GET", &format!("/jobs/{id}"), "");
        assert_eq!(status, 200, "{body}");
        if body["state"] != "running" {
            return body;
        }
        assert!(Instant::now() < deadline, "job {id} still running: {body}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn jobs_over_http_start_report_progress_and_cancel() {
    let dir = tempdir();
    let s = start(dir.path());
    let input = write_rows(dir.path(), "in.jsonl", 20_000);

    // A bad config body: 400, every problem with its key.
    let bad = config(
        &input,
        &dir.path().join("x"),
        "",
        "size = 0\nnum_actors = \"two\"",
    );
    let (status, body) = request(&s, "POST", "/jobs", &bad);
    assert_eq!(status, 400, "{body}");
    let keys: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap())
        .collect();
    assert!(keys.contains(&"batch.num_actors"), "{body}");
    let (status, body) = request(&s, "POST", "/jobs", "[model]\nbackend = \"nope\"\n");
    assert_eq!(status, 400, "{body}");

    // A job to the end.
    let out = dir.path().join("done");
    let (status, body) = request(&s, "POST", "/jobs", &config(&input, &out, "", "size = 256"));
    assert_eq!(status, 201, "{body}");
    let done = settle(&s, body["id"].as_u64().unwrap());
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(done["report"]["rows"], 20_000);
    assert_eq!(done["progress"]["rows_done"], 20_000);
    assert_synthetic_rows(&output_bytes(&out), 20_000);

    // A slow job, cancelled once it has done some work.
    let slow = dir.path().join("slow");
    let (status, body) = request(
        &s,
        "POST",
        "/jobs",
        &config(&input, &slow, "batch_ms = 20", "size = 100\nnum_actors = 2"),
    );
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_u64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, body) = request(&s, "GET", &format!("/jobs/{id}"), "");
        assert_eq!(body["state"], "running", "{body}");
        if body["progress"]["shards_committed"].as_u64().unwrap() >= 1 {
            break;
        }
        assert!(Instant::now() < deadline, "no shard committed: {body}");
        std::thread::sleep(Duration::from_millis(10));
    }
    let (status, _) = request(&s, "DELETE", &format!("/jobs/{id}"), "");
    assert_eq!(status, 202);
    let cancelled = settle(&s, id);
    assert_eq!(cancelled["state"], "cancelled", "{cancelled}");
    let rows = cancelled["progress"]["rows_done"].as_u64().unwrap();
    assert!(rows > 0 && rows < 20_000, "{cancelled}");

    let (status, _) = request(&s, "GET", "/jobs/999", "");
    assert_eq!(status, 404);
}
