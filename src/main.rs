//! The `stook` command: parses arguments, loads the config, calls the
//! library, maps errors to exit codes. Everything it does, a host can do
//! through the library.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bench::{BackpressureBench, CheckpointBench, PipelineBench};
#[cfg(feature = "embedding")]
use bench::{KernelsBench, StagesBench};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use stook::{BackendRegistry, Job, JobConfig, RunControl, RunError, Worker};

mod bench;
mod worker_env;

/// Exit codes.
const EXIT_FAILED: u8 = 1;
const EXIT_CONFIG: u8 = 2;
const EXIT_BAD_INPUT: u8 = 3;
const EXIT_CANCELLED: u8 = 130;
/// 128 + SIGTERM, as a shell reports a process SIGTERM ended.
const EXIT_TERMINATED: u8 = 143;

#[derive(Parser)]
#[command(
    name = "stook",
    version,
    about = "Run a model over every row of a dataset, in order, within a memory budget"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a job.
    Run {
        /// The job's config file (TOML).
        config: PathBuf,
        /// Delete stook's files in the output directory first.
        #[arg(long)]
        fresh: bool,
        /// Print the run report as JSON on stdout.
        #[arg(long)]
        json: bool,
        /// Compute only worker I's shards of N (those whose index ≡ I mod
        /// N); `stook merge` then writes the final output. Without it, the
        /// worker comes from SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX
        /// when set; `--shard 0/1` runs the whole job whatever is set.
        #[arg(long, value_name = "I/N")]
        shard: Option<String>,
        /// Workers in all, where the environment gives only an index
        /// (JOB_COMPLETION_INDEX); overrides checkpoint.workers.
        #[arg(long, value_name = "N")]
        shards: Option<u64>,
    },
    /// Shards committed and missing, per worker, of a job's output.
    Status {
        /// The job's config file (TOML).
        config: PathBuf,
        /// Print the status as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Once every worker has committed its shards: verify every part and
    /// write the final output and `_SUCCESS`.
    Merge {
        /// The job's config file (TOML).
        config: PathBuf,
    },
    /// Check the config and every input row; loads no model.
    Validate {
        /// The job's config file (TOML).
        config: PathBuf,
    },
    /// List the registered backends and what each row must contain.
    Backends,
    /// Benchmarks that print figures.
    Bench {
        #[command(subcommand)]
        which: BenchCommand,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// stook with the echo backend against a plain serde_json loop.
    Pipeline(PipelineBench),
    /// The cost of shard commits and the work a stop loses.
    Checkpoint(CheckpointBench),
    /// A fast source over a slow model within a memory budget.
    Backpressure(BackpressureBench),
    /// The embedding backend's stages alone: tokenizer, forward, writer.
    #[cfg(feature = "embedding")]
    Stages(StagesBench),
    /// The packed encoder's ops on a GPU against their CPU versions.
    #[cfg(feature = "embedding")]
    Kernels(KernelsBench),
}

fn main() -> ExitCode {
    // First thing, so that no Ctrl-C finds the default action (death
    // without cleanup) once a job may have started writing.
    install_ctrl_c();
    install_sigterm();
    // A reader that goes away (`stook backends | head -c1`) ends stook
    // as it ends other command-line tools, quietly, instead of making
    // every print a panic. What is committed stays committed.
    // SAFETY: setting a signal's disposition before any thread writes.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let cli = Cli::parse();
    let registry = BackendRegistry::with_builtins();
    match cli.command {
        Command::Run {
            config,
            fresh,
            json,
            shard,
            shards,
        } => run(&registry, &config, fresh, json, shard.as_deref(), shards),
        Command::Status { config, json } => status(&registry, &config, json),
        Command::Merge { config } => merge(&registry, &config),
        Command::Validate { config } => validate(&registry, &config),
        Command::Backends => {
            for (name, summary, schema) in registry.describe() {
                println!("{name}\n  {summary}\n  rows: {schema}");
            }
            ExitCode::SUCCESS
        }
        Command::Bench { which } => {
            let r = match which {
                BenchCommand::Pipeline(args) => bench::pipeline(&args),
                BenchCommand::Checkpoint(args) => bench::checkpoint(&args),
                BenchCommand::Backpressure(args) => bench::backpressure(&args),
                #[cfg(feature = "embedding")]
                BenchCommand::Stages(args) => bench::stages(&args),
                #[cfg(feature = "embedding")]
                BenchCommand::Kernels(args) => bench::kernels(&args),
            };
            match r {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&e.to_string(), EXIT_FAILED),
            }
        }
    }
}

fn fail(message: &str, code: u8) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(code)
}

fn exit_code(e: &RunError) -> u8 {
    match e {
        RunError::Config(_) => EXIT_CONFIG,
        RunError::InvalidInput { .. } | RunError::NoRows { .. } => EXIT_BAD_INPUT,
        RunError::Pipeline(stook_actors::PipelineError::Row(_)) => EXIT_BAD_INPUT,
        e if e.is_cancelled() => EXIT_CANCELLED,
        _ => EXIT_FAILED,
    }
}

fn load(registry: &BackendRegistry, path: &Path) -> Result<Job, RunError> {
    let config = JobConfig::load(path)?;
    Job::new(config, registry, path)
}

fn validate(registry: &BackendRegistry, path: &Path) -> ExitCode {
    let job = match load(registry, path) {
        Ok(j) => j,
        Err(e) => return fail(&e.to_string(), exit_code(&e)),
    };
    match job.validate() {
        Ok(v) if v.error_count == 0 => {
            eprintln!(
                "{}: {} rows OK, {} blank lines",
                job.config().input.path.display(),
                v.rows,
                v.blank_lines
            );
            ExitCode::SUCCESS
        }
        Ok(v) => {
            let e = RunError::InvalidInput {
                errors: v.errors,
                count: v.error_count,
                skippable: job.bad_rows_skippable(),
            };
            fail(&e.to_string(), EXIT_BAD_INPUT)
        }
        Err(e) => fail(&e.to_string(), exit_code(&e)),
    }
}

fn status(registry: &BackendRegistry, path: &Path, json: bool) -> ExitCode {
    match load(registry, path).and_then(|job| job.status()) {
        Ok(s) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
            } else {
                print!("{s}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e.to_string(), exit_code(&e)),
    }
}

fn merge(registry: &BackendRegistry, path: &Path) -> ExitCode {
    let job = match load(registry, path) {
        Ok(j) => j,
        Err(e) => return fail(&e.to_string(), exit_code(&e)),
    };
    match job.merge() {
        Ok(t) => {
            let out = &job.config().output;
            eprintln!(
                "{}: merged {} shards, {} rows ({} bad){}",
                out.path.display(),
                t.shards,
                t.rows,
                t.errors,
                out.assemble
                    .as_ref()
                    .map(|a| format!(" into {}", a.display()))
                    .unwrap_or_default()
            );
            for p in &t.parts {
                println!("{}", out.path.join(p).display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e.to_string(), exit_code(&e)),
    }
}

/// The worker from the flags or the scheduler's environment, said aloud.
fn choose_worker(job: &Job, shard: Option<&str>, shards: Option<u64>) -> Result<Worker, RunError> {
    let (worker, from) = worker_env::worker(shard, shards, job.config().checkpoint.workers, |k| {
        std::env::var(k).ok()
    })
    .map_err(|why| {
        RunError::Config(stook::ConfigErrors {
            path: PathBuf::from("command line"),
            problems: vec![stook::ConfigProblem::new("shard", why)],
        })
    })?;
    if !worker.is_alone() {
        let layout = job.layout()?;
        let owned = (0..layout.shards()).filter(|&s| worker.owns(s)).count();
        eprintln!(
            "stook: worker {worker} ({from}): shards ≡ {} mod {}, {owned} of {}",
            worker.index,
            worker.count,
            layout.shards()
        );
    }
    Ok(worker)
}

fn run(
    registry: &BackendRegistry,
    path: &Path,
    fresh: bool,
    json: bool,
    shard: Option<&str>,
    shards: Option<u64>,
) -> ExitCode {
    let job = match load(registry, path) {
        Ok(j) => j,
        Err(e) => return fail(&e.to_string(), exit_code(&e)),
    };
    let worker = match choose_worker(&job, shard, shards) {
        Ok(w) => w,
        Err(e) => return fail(&e.to_string(), exit_code(&e)),
    };
    let control = RunControl {
        fresh,
        worker,
        ..RunControl::default()
    };
    let _ = JOB_CANCEL.set(control.cancel.clone());
    let bar = progress_bar(&control);
    let result = job.run_blocking(control);
    bar.finish();
    match result {
        Ok(report) => {
            eprintln!("{}", report.summary(&job.config().output.path));
            if !worker.is_alone() {
                eprintln!(
                    "stook: worker {worker} has committed all its shards; run `stook merge {}` \
                     once every worker has",
                    path.display()
                );
            }
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).unwrap_or_default()
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) if e.is_cancelled() => {
            if TERMINATED.load(Ordering::SeqCst) > 0 {
                eprintln!(
                    "stook: stopped by SIGTERM; committed shards are kept in the output directory"
                );
                return ExitCode::from(EXIT_TERMINATED);
            }
            eprintln!("stook: cancelled; committed shards are kept in the output directory");
            ExitCode::from(EXIT_CANCELLED)
        }
        Err(e) => fail(&e.to_string(), exit_code(&e)),
    }
}

/// SIGTERMs received.
static TERMINATED: AtomicUsize = AtomicUsize::new(0);

/// SIGTERM (what Kubernetes and Slurm send before SIGKILL) stops a job as
/// the first Ctrl-C does, and stook exits 143; a second one, or one before a
/// job has started, exits at once. Runs in the signal's context: only
/// atomics and `_exit`.
extern "C" fn on_sigterm(_: libc::c_int) {
    let first = TERMINATED.fetch_add(1, Ordering::SeqCst) == 0;
    match JOB_CANCEL.get() {
        Some(cancel) if first => cancel.store(true, Ordering::SeqCst),
        // SAFETY: _exit is async-signal-safe.
        _ => unsafe { libc::_exit(i32::from(EXIT_TERMINATED)) },
    }
}

fn install_sigterm() {
    // SAFETY: the handler only touches atomics and calls _exit.
    let handler: extern "C" fn(libc::c_int) = on_sigterm;
    let r = unsafe { libc::signal(libc::SIGTERM, handler as libc::sighandler_t) };
    if r == libc::SIG_ERR {
        tracing::warn!("cannot install the SIGTERM handler");
    }
}

/// The running job's cancel flag, once `stook run` has one.
static JOB_CANCEL: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();

/// During a job, the first Ctrl-C stops admitting work and finishes
/// cleanly; a second, or any before a job starts, exits at once (130).
fn install_ctrl_c() {
    let presses = AtomicUsize::new(0);
    let r = ctrlc::set_handler(move || match JOB_CANCEL.get() {
        Some(cancel) if presses.fetch_add(1, Ordering::SeqCst) == 0 => {
            eprintln!("\nstook: stopping after the batches in flight (Ctrl-C again to exit now)");
            cancel.store(true, Ordering::SeqCst);
        }
        _ => std::process::exit(i32::from(EXIT_CANCELLED)),
    });
    if let Err(e) = r {
        tracing::warn!(error = %e, "cannot install the Ctrl-C handler");
    }
}

/// Rows, rows/s and ETA on a terminal; nothing when stderr is not one.
struct Bar {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Bar {
    fn finish(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn progress_bar(control: &RunControl) -> Bar {
    let stop = Arc::new(AtomicBool::new(false));
    if !std::io::stderr().is_terminal() {
        return Bar { stop, thread: None };
    }
    let progress = control.progress.clone();
    let stop2 = stop.clone();
    let thread = std::thread::spawn(move || {
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} rows  {msg}  ETA {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let start = std::time::Instant::now();
        while !stop2.load(Ordering::SeqCst) {
            let s = progress.snapshot();
            bar.set_length(s.rows_total);
            bar.set_position(s.rows_done);
            let rate = s.rows_done as f64 / start.elapsed().as_secs_f64().max(1e-3);
            let mut msg = if s.rows_total == 0 {
                "validating".to_string()
            } else {
                format!("{rate:.0} rows/s")
            };
            if s.errors > 0 {
                msg.push_str(&format!(", {} bad", s.errors));
            }
            bar.set_message(msg);
            std::thread::sleep(Duration::from_millis(100));
        }
        bar.finish_and_clear();
    });
    Bar {
        stop,
        thread: Some(thread),
    }
}
