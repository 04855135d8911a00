//! An S3-compatible store for the tests: moto's server, from PyPI
//! (scripts/pyarrow-env.sh installs it into .venv-arrow), started once per
//! test binary on 127.0.0.1, and a proxy in front of it that throttles.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{ChildStdout, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use stook_actors::remote::Location;

use super::openai::{python, root};

/// The credentials and endpoint a stook process needs for the test store.
pub fn env(port: u16) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}")),
        ("AWS_ACCESS_KEY_ID", "testing".into()),
        ("AWS_SECRET_ACCESS_KEY", "testing-secret-key".into()),
        ("AWS_REGION", "us-east-1".into()),
    ]
}

/// Starts `cmd` from a thread that lives as long as the test binary (it
/// waits on the child), with PR_SET_PDEATHSIG: the server dies with the
/// tests however they end. Returns the child's stdout, if piped.
fn spawn_for_life(mut cmd: Command) -> Option<ChildStdout> {
    use std::os::unix::process::CommandExt;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // SAFETY: prctl only, between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        match cmd.spawn() {
            Ok(mut child) => {
                let _ = tx.send(Ok(child.stdout.take()));
                let _ = child.wait();
                // The thread that forked it must outlive the tests.
                loop {
                    std::thread::park();
                }
            }
            Err(e) => {
                let _ = tx.send(Err(e));
            }
        }
    });
    rx.recv().unwrap().expect("starting a test server")
}

fn wait_for_port(port: u16, what: &str) {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{what} did not listen on 127.0.0.1:{port} within 60 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The test store's port (started on first use; this process's own
/// object-storage calls are pointed at it too).
pub fn port() -> u16 {
    static PORT: OnceLock<u16> = OnceLock::new();
    *PORT.get_or_init(|| {
        let py = python();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut cmd = Command::new(py.parent().unwrap().join("moto_server"));
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        spawn_for_life(cmd);
        wait_for_port(port, "moto_server");
        for (k, v) in env(port) {
            // SAFETY: set once, before this process's first object-storage
            // call reads the environment.
            std::env::set_var(k, v);
        }
        port
    })
}

/// A proxy to the test store that answers every `every`th request 503
/// SlowDown; its port, and the file that counts the requests refused.
pub fn throttling_proxy(every: u32, count_file: &Path) -> u16 {
    let mut cmd = Command::new(python());
    cmd.arg(root().join("tests/s3_proxy.py"))
        .arg(port().to_string())
        .arg(every.to_string())
        .arg(count_file)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let stdout = spawn_for_life(cmd).expect("the proxy's stdout");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let p: u16 = line.trim().parse().expect("the proxy's port");
    wait_for_port(p, "the throttling proxy");
    p
}

/// Makes bucket `name` in the test store.
pub fn make_bucket(name: &str) {
    let mut s = TcpStream::connect(("127.0.0.1", port())).unwrap();
    write!(
        s,
        "PUT /{name} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "making bucket {name}: {answer}"
    );
}

/// The object at `url`.
pub fn location(url: &str) -> Location {
    port();
    Location::parse(Path::new(url)).unwrap()
}

/// Uploads `file` to `url`.
pub fn upload(file: &Path, url: &str) {
    location(url)
        .put(std::fs::read(file).unwrap().into(), false)
        .unwrap();
}

/// The object at `url`, whole.
pub fn download(url: &str) -> Vec<u8> {
    location(url).get().unwrap().to_vec()
}

/// The names of the objects directly under `url`.
pub fn names(url: &str) -> Vec<String> {
    let mut n = location(url).names().unwrap();
    n.sort();
    n
}

/// The part files under `url`, concatenated in name order.
pub fn output_bytes(url: &str) -> Vec<u8> {
    names(url)
        .iter()
        .filter(|n| n.starts_with("part-"))
        .flat_map(|n| download(&format!("{url}/{n}")))
        .collect()
}
