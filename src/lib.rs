//! stook runs a model over every row of a large dataset, offline, on one
//! machine's CPUs and GPUs, and writes one result per row, in order, within
//! a memory budget it accounts for to the byte.
//!
//! As a library it runs inside the host's own `actix::System`: no second
//! runtime, no global state, no environment read, no signal handler. A
//! [`Job`] is a typed [`JobConfig`] (the struct a TOML file deserialises
//! into) and a backend from a [`BackendRegistry`], where a host registers
//! its own [`Backend`]s beside the built-in ones. [`Job::start`] returns a
//! [`JobHandle`] at once: progress events, exact counters, `cancel()` (as
//! Ctrl-C: clean and resumable) and a future of the [`RunReport`].
//!
//! ```
//! use stook::{BackendRegistry, Job, JobConfig, ProgressEvent, RunControl};
//!
//! let dir = tempfile::tempdir()?;
//! let input = dir.path().join("in.jsonl");
//! std::fs::write(&input, "{\"id\": 1, \"text\": \"hello\"}\n{\"id\": 2, \"text\": \"world\"}\n")?;
//! let config = JobConfig::new(&input, dir.path().join("out"), "echo");
//! let job = Job::new(config, &BackendRegistry::with_builtins(), "example".as_ref())?;
//!
//! let report = actix::System::new().block_on(async move {
//!     let mut handle = job.start(RunControl::default());
//!     let mut events = handle.events().expect("first call");
//!     while let Some(event) = events.recv().await {
//!         if let ProgressEvent::ShardCommitted { shard, rows, .. } = event {
//!             println!("shard {shard}: {rows} rows");
//!         }
//!     }
//!     handle.wait().await
//! })?;
//! assert_eq!(report.rows, 2);
//! let out = std::fs::read_to_string(dir.path().join("out/part-00000.jsonl"))?;
//! assert_eq!(out.lines().count(), 2);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Without a System of its own, a caller uses [`Job::run_blocking`]. The
//! actors themselves are in the `stook-actors` crate; this crate holds the
//! config, the backend registry, the built-in backends, the Runner and the
//! job handle. `examples/host_actix.rs` and `examples/actix_web_jobs.rs`
//! are complete hosts.

#![warn(missing_docs)]

pub mod backends;
pub mod config;
pub mod error;
pub mod handle;
pub mod output;
pub mod registry;
pub mod report;
pub mod runner;

pub use config::{ByteSize, ConfigErrors, ConfigProblem, JobConfig};
pub use handle::{JobHandle, ResultStream};
pub use registry::{BackendOptions, BackendRegistry};
pub use report::RunReport;
pub use runner::{Job, RunControl, RunError};
pub use stook_actors::checkpoint::{self, Worker};
pub use stook_actors::sink::ResultBatch;
pub use stook_actors::{
    Backend, Device, Model, ModelError, Progress, ProgressEvent, ProgressSnapshot, RequestBatch,
    RequestSchema, ResultWriter,
};
