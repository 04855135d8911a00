//! One Python worker process and the socket stook drives it through.
//!
//! The worker is `python -u -c <worker.py>` in its own process group,
//! with the control socket as file descriptor 3 and `PR_SET_PDEATHSIG`
//! set, so that it dies with stook (every worker is forked by one thread
//! that lives as long as the process, since the signal follows the
//! forking thread). Its stdout and stderr are read line by
//! line into stook's log (target `stook::python`; stdout at info, stderr at
//! warn); the last lines of stderr are kept for the message when it dies. Dropping a [`Worker`] closes the
//! socket, waits a moment for it to exit and then kills its whole group.

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;
use stook_actors::ObjectStore;

/// The worker's code, handed to the interpreter at start.
const WORKER_PY: &str = include_str!("worker.py");

/// Lines of stderr kept for the message when a worker dies.
const TAIL: usize = 20;

/// What went wrong talking to a worker.
#[derive(Debug)]
pub(super) enum Fault {
    /// The Python code raised: the worker is still usable.
    Raised(String),
    /// The worker is gone or cannot be trusted any more (died, timed out,
    /// spoke nonsense): it must be replaced.
    Lost(String),
}

/// How to start a worker.
#[derive(Clone, Debug)]
pub(super) struct Launch {
    pub python: String,
    /// `CUDA_VISIBLE_DEVICES` for it, if stook places it.
    pub cuda_visible: Option<String>,
}

/// A running worker.
pub(super) struct Worker {
    child: Child,
    control: UnixStream,
    tail: Arc<Mutex<VecDeque<String>>>,
    /// The store whose memory it has mapped.
    store: Option<ObjectStore>,
}

impl Worker {
    /// Starts a worker (it imports nothing of the user's yet).
    pub fn spawn(launch: &Launch) -> Result<Worker, String> {
        let (ours, theirs) =
            UnixStream::pair().map_err(|e| format!("cannot make a socket pair: {e}"))?;
        let fd = theirs.as_raw_fd();
        let mut cmd = Command::new(&launch.python);
        cmd.arg("-u")
            .arg("-c")
            .arg(WORKER_PY)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(v) = &launch.cuda_visible {
            cmd.env("CUDA_VISIBLE_DEVICES", v);
        }
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if fd == 3 {
                    let flags = libc::fcntl(3, libc::F_GETFD);
                    libc::fcntl(3, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
                } else if libc::dup2(fd, 3) < 0 {
                    return Err(io::Error::last_os_error());
                }
                // Its own group: a Ctrl-C at the terminal reaches stook,
                // which stops the workers itself, and stook can kill the
                // worker's own children with it.
                libc::setpgid(0, 0);
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = spawn_child(cmd).map_err(|e| {
            format!(
                "cannot start the Python interpreter {:?}: {e} (model.options.python)",
                launch.python
            )
        })?;
        drop(theirs);
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let pid = child.id();
        if let Some(out) = child.stdout.take() {
            forward(out, pid, "stdout", None);
        }
        if let Some(err) = child.stderr.take() {
            forward(err, pid, "stderr", Some(tail.clone()));
        }
        Ok(Worker {
            child,
            control: ours,
            tail,
            store: None,
        })
    }

    /// The worker's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `msg` and waits up to `timeout` (forever if `None`) for the
    /// answer. An answer with an `error` is [`Fault::Raised`].
    pub fn call(&mut self, msg: &Value, timeout: Option<Duration>) -> Result<Value, Fault> {
        self.send(msg, None)?;
        self.reply(timeout)
    }

    /// Sends `msg` without waiting for the answer ([`Worker::reply`]).
    pub fn send_load(&mut self, msg: &Value) -> Result<(), Fault> {
        self.send(msg, None)
    }

    /// Maps `store` in the worker unless it has it already.
    pub fn attach(&mut self, store: &ObjectStore, timeout: Option<Duration>) -> Result<(), Fault> {
        if self.store.as_ref().is_some_and(|s| s.same(store)) {
            return Ok(());
        }
        let msg = serde_json::json!({"op": "store", "size": store.region_len()});
        self.send(&msg, Some(store.shared_fd().as_raw_fd()))?;
        self.reply(timeout)?;
        self.store = Some(store.clone());
        Ok(())
    }

    fn send(&mut self, msg: &Value, fd: Option<RawFd>) -> Result<(), Fault> {
        let body = msg.to_string();
        let mut frame = (body.len() as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(body.as_bytes());
        let sent = match fd {
            Some(fd) => send_with_fd(&self.control, &frame, fd),
            None => self.control.write_all(&frame),
        };
        sent.map_err(|e| self.lost(&format!("cannot write to it: {e}")))
    }

    /// Waits up to `timeout` for the answer to what was sent last.
    pub fn reply(&mut self, timeout: Option<Duration>) -> Result<Value, Fault> {
        let started = Instant::now();
        let mut head = [0u8; 4];
        self.read_exact(&mut head, timeout, started)?;
        let mut body = vec![0u8; u32::from_le_bytes(head) as usize];
        self.read_exact(&mut body, timeout, started)?;
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| self.lost(&format!("it answered something that is not JSON: {e}")))?;
        match v.get("error").and_then(Value::as_str) {
            Some(error) => {
                let tb = v.get("traceback").and_then(Value::as_str).unwrap_or("");
                Err(Fault::Raised(if tb.is_empty() {
                    error.to_string()
                } else {
                    format!("{error}\n{tb}")
                }))
            }
            None => Ok(v),
        }
    }

    fn read_exact(
        &mut self,
        buf: &mut [u8],
        timeout: Option<Duration>,
        started: Instant,
    ) -> Result<(), Fault> {
        let mut got = 0;
        while got < buf.len() {
            let left = match timeout {
                Some(t) => match t.checked_sub(started.elapsed()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => return Err(self.timed_out(t)),
                },
                None => None,
            };
            // set_read_timeout refuses zero; `left` is never zero here.
            let _ = self.control.set_read_timeout(left);
            match self.control.read(&mut buf[got..]) {
                Ok(0) => return Err(self.lost("it closed the connection")),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(self.lost(&format!("cannot read from it: {e}"))),
            }
        }
        Ok(())
    }

    fn timed_out(&mut self, t: Duration) -> Fault {
        let pid = self.pid();
        self.kill();
        Fault::Lost(format!(
            "the Python worker (pid {pid}) gave no answer within {:.1} s (batch.timeout): it was killed",
            t.as_secs_f64()
        ))
    }

    /// The worker is unusable: says how it ended, with its last stderr lines.
    fn lost(&mut self, what: &str) -> Fault {
        let pid = self.pid();
        // A dying process may close the socket a moment before it exits.
        let status = wait_for(&mut self.child, Duration::from_secs(2));
        let ended = match status {
            Some(s) => format!("it {}", describe(s)),
            None => {
                self.kill();
                format!("{what}; it was killed")
            }
        };
        let tail: Vec<String> = self
            .tail
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect();
        let tail = if tail.is_empty() {
            String::new()
        } else {
            format!("; its last stderr lines:\n{}", tail.join("\n"))
        };
        Fault::Lost(format!("the Python worker (pid {pid}) died: {ended}{tail}"))
    }

    fn kill(&mut self) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: plain syscalls; the group is the worker's own (setpgid).
        unsafe {
            libc::killpg(pid, libc::SIGKILL);
            libc::kill(pid, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Closing the socket asks it to exit; what it started goes too.
        let _ = self.control.shutdown(std::net::Shutdown::Both);
        if wait_for(&mut self.child, Duration::from_secs(2)).is_some() {
            // SAFETY: plain syscall on the worker's own group.
            unsafe { libc::killpg(self.child.id() as libc::pid_t, libc::SIGKILL) };
        } else {
            self.kill();
        }
    }
}

/// A spawn request for the spawner thread, and where its answer goes.
type SpawnRequest = (Command, mpsc::SyncSender<io::Result<Child>>);

/// Starts `cmd` from one thread that lives as long as the process:
/// `PR_SET_PDEATHSIG` fires when the thread that forked a child ends, so a
/// worker forked by a thread that ends (a host's, an actor's at the end of
/// a run) would be killed with it.
fn spawn_child(mut cmd: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<Option<Mutex<mpsc::Sender<SpawnRequest>>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("python-spawner".into())
            .spawn(move || {
                for (mut cmd, answer) in rx {
                    let _ = answer.send(cmd.spawn());
                }
            })
            .ok()
            .map(|_| Mutex::new(tx))
    });
    let Some(spawner) = spawner else {
        return cmd.spawn();
    };
    let (answer, got) = mpsc::sync_channel(1);
    let sent = spawner
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .send((cmd, answer));
    match sent {
        Ok(()) => got
            .recv()
            .unwrap_or_else(|_| Err(io::Error::other("the spawner thread is gone"))),
        Err(mpsc::SendError((mut cmd, _))) => cmd.spawn(),
    }
}

fn wait_for(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Some(s),
            Ok(None) if started.elapsed() < limit => std::thread::sleep(Duration::from_millis(10)),
            _ => return None,
        }
    }
}

fn describe(s: ExitStatus) -> String {
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(sig)) => format!("was killed by signal {sig}{}", signal_name(sig)),
        _ => format!("ended: {s}"),
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGKILL => " (SIGKILL: killed, by the OOM killer perhaps)",
        libc::SIGSEGV => " (SIGSEGV: a crash in native code)",
        libc::SIGABRT => " (SIGABRT: aborted)",
        libc::SIGBUS => " (SIGBUS)",
        _ => "",
    }
}

/// Logs what the worker writes to `stream`, a line at a time.
fn forward(
    stream: impl Read + Send + 'static,
    pid: u32,
    name: &'static str,
    tail: Option<Arc<Mutex<VecDeque<String>>>>,
) {
    let run = move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if tail.is_some() {
                tracing::warn!(target: "stook::python", pid, stream = name, "{line}");
            } else {
                tracing::info!(target: "stook::python", pid, stream = name, "{line}");
            }
            if let Some(t) = &tail {
                let mut t = t.lock().unwrap_or_else(|p| p.into_inner());
                if t.len() == TAIL {
                    t.pop_front();
                }
                t.push_back(line);
            }
        }
    };
    let _ = std::thread::Builder::new()
        .name(format!("python-{pid}-{name}"))
        .spawn(run);
}

/// Writes `frame` with `fd` attached (SCM_RIGHTS) to the first byte.
fn send_with_fd(sock: &UnixStream, frame: &[u8], fd: RawFd) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: frame.as_ptr() as *mut libc::c_void,
        iov_len: frame.len(),
    };
    let fd_len = std::mem::size_of::<RawFd>() as u32;
    // SAFETY: CMSG_* compute sizes and positions inside `control`, which
    // is large enough and u64-aligned; the message is sent synchronously.
    let sent = unsafe {
        let space = libc::CMSG_SPACE(fd_len) as usize;
        let mut control = vec![0u64; space.div_ceil(8)];
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = space as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(fd_len) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut RawFd, fd);
        libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL)
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    // The rest (if the kernel took only part of it) goes as plain bytes.
    let mut sock = sock;
    sock.write_all(&frame[sent as usize..])
}
