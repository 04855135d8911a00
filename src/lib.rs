//! stook runs a model over every row of a large dataset, offline, on one
//! machine's CPUs and GPUs, and writes one result per row, in order, within
//! a memory budget it accounts for to the byte.
//!
//! ```no_run
//! use stook::{BackendRegistry, Job, JobConfig, RunControl};
//!
//! let path = std::path::Path::new("config/demo.toml");
//! let config = JobConfig::load(path)?;
//! let job = Job::new(config, &BackendRegistry::with_builtins(), path)?;
//! let report = job.run_blocking(RunControl::default())?;
//! println!("{} rows, {} rows/s", report.rows, report.rows_per_second);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The actors themselves are in the `stook-actors` crate; this crate holds
//! the config, the backend registry, the built-in backends and the Runner.

#![warn(missing_docs)]

pub mod backends;
pub mod bench;
pub mod config;
pub mod output;
pub mod registry;
pub mod report;
pub mod runner;

pub use config::{ByteSize, ConfigErrors, ConfigProblem, JobConfig};
pub use registry::{BackendOptions, BackendRegistry};
pub use report::RunReport;
pub use runner::{Job, RunControl, RunError};
pub use stook_actors::checkpoint::{self, Worker};
pub use stook_actors::{
    Backend, Device, Model, ModelError, Progress, RequestBatch, RequestSchema, ResultWriter,
};
