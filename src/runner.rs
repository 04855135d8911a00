//! The Runner: turns a checked config into a running pipeline and a report.
//!
//! ```text
//!  Job::new(config, registry)   builds the backend from its options (no model yet)
//!  job.validate()               checks every row; loads no model
//!  job.run(control).await       validate (on_error = "fail") → devices → store →
//!                               Source, Sink, BackendActors on their own arbiters,
//!                               Scheduler here → merge (one worker) → report;
//!                               every thread joined
//!  job.status() / job.merge()   where a job split among workers stands; its final output
//! ```
//!
//! Everything runs inside the caller's `actix::System`; [`Job::run_blocking`]
//! makes one for callers that have none.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use stook_actors::checkpoint::{Todo, Worker};
use stook_actors::input::{Input, RowLimits, Validation};
use stook_actors::messages::SinkSummary;
use stook_actors::pipeline::{self, Feed, PipelineConfig};
use stook_actors::rows::{data_start, Lines};
use stook_actors::scheduler::batch_need;
use stook_actors::sink::{ResultSender, SinkConfig};
use stook_actors::source::RowFeed;
use stook_actors::{
    Backend, Device, DeviceError, GpuInventory, PipelineError, Progress, SharedModel, StoreStats,
};

use arrow_schema::DataType;
use stook_actors::OutputColumns;
use stook_actors::RequestSchema;

use crate::config::{Compute, ConfigErrors, DeviceChoice, JobConfig, OnError};
pub use crate::error::{RunError, ERRORS_SHOWN};
use crate::output::{self, Layout, OutputDir, Status, Totals, REPORT_STEM};
use crate::registry::BackendRegistry;
use crate::report::{peak_rss_bytes, RunFacts, RunReport, WorkerMemory};

/// What the caller controls while a job runs.
#[derive(Clone, Default)]
pub struct RunControl {
    /// Set to stop: no new batches; in-flight ones finish; complete shards stay.
    pub cancel: Arc<AtomicBool>,
    /// Live counters.
    pub progress: Arc<Progress>,
    /// Delete stook's files in the output directory first.
    pub fresh: bool,
    /// In tasks mode, the model slot to use (a host may share one across
    /// runs); a new one per run if `None`.
    pub shared_model: Option<Arc<SharedModel>>,
    /// Which slice of the job this process computes (the default: all of
    /// it). A worker of several computes and commits its own shards and
    /// leaves the final output to [`Job::merge`].
    pub worker: Worker,
}

/// A job: a checked config and its backend.
pub struct Job {
    config: JobConfig,
    config_path: PathBuf,
    backend: Arc<dyn Backend>,
}

impl Job {
    /// Builds the job's backend from `[model]`; loads nothing.
    pub fn new(
        config: JobConfig,
        registry: &BackendRegistry,
        config_path: &Path,
    ) -> Result<Self, RunError> {
        let problems = config.validate();
        if !problems.is_empty() {
            return Err(ConfigErrors {
                path: config_path.to_path_buf(),
                problems,
            }
            .into());
        }
        // Every actor of a pool owns a model; workers of a tasks pool
        // share one.
        let (cpu_models, calls) = match config.batch.compute {
            crate::config::Compute::Actors => (config.batch.num_actors, 1),
            crate::config::Compute::Tasks => (1, config.batch.num_actors),
        };
        let options = crate::registry::BackendOptions::new(config.model.options.clone())
            .with_cpu_models(cpu_models)
            .with_calls(calls, config.batch.timeout.map(|t| t.0));
        let backend = registry
            .create_from(&config.model, options)
            .map_err(|problems| ConfigErrors {
                path: config_path.to_path_buf(),
                problems,
            })?;
        let job = Job {
            config,
            config_path: config_path.to_path_buf(),
            backend,
        };
        // A name both passed through and in the backend's declared results
        // (checked again with a table's columns when the input is read).
        job.output_columns(None)?;
        Ok(job)
    }

    /// The config.
    pub fn config(&self) -> &JobConfig {
        &self.config
    }

    fn limits(&self) -> RowLimits {
        RowLimits {
            max_line_bytes: self.config.input.max_line_bytes.as_usize(),
        }
    }

    /// The output objects' columns: the backend's (for a table input, as
    /// its rows are typed: `echo` writes them back as they are) and the
    /// passthrough columns; a name in both is refused.
    fn output_columns(&self, input: Option<&Input>) -> Result<OutputColumns, RunError> {
        let rows = match input {
            Some(Input::Table(t)) => t.row_schema(),
            _ => None,
        };
        let columns = OutputColumns::new(
            self.backend.as_ref(),
            &self.config.output.passthrough,
            rows.as_ref(),
        );
        if let Some(n) = columns.clash() {
            return Err(ConfigErrors {
                path: self.config_path.clone(),
                problems: vec![crate::config::ConfigProblem::new(
                    "output.passthrough",
                    format!(
                        "{n:?} is a key of the {} backend's results already",
                        self.config.model.backend
                    ),
                )],
            }
            .into());
        }
        Ok(columns)
    }

    /// The columns of a Parquet or Arrow part.
    /// `pass_types`: each passthrough column's type in a table input.
    fn table_schema(
        &self,
        output: &OutputColumns,
        pass_types: &[Option<DataType>],
    ) -> arrow_schema::SchemaRef {
        let typed: Vec<(String, DataType)> = self
            .config
            .output
            .passthrough
            .iter()
            .zip(pass_types)
            .filter_map(|(n, t)| Some((n.clone(), t.clone()?)))
            .collect();
        stook_actors::parts::table_schema(
            &output.schema,
            &typed,
            !self.config.output.preserve_order,
        )
    }

    /// The schema the Source encodes: the backend's and the passthrough
    /// fields.
    fn source_schema(&self) -> RequestSchema {
        self.backend
            .schema()
            .with_passthrough(&self.config.output.passthrough)
            .0
    }

    /// Each passthrough column's type in a table input (refused when the
    /// table has no such column); nothing for JSON Lines.
    fn passthrough_types(&self, input: &Input) -> Result<Vec<Option<DataType>>, RunError> {
        let Input::Table(t) = input else {
            return Ok(Vec::new());
        };
        self.config
            .output
            .passthrough
            .iter()
            .map(|n| match t.column_type(n) {
                Some(ty) => Ok(Some(ty)),
                None => Err(RunError::Pipeline(PipelineError::Input {
                    path: t.path().to_path_buf(),
                    source: std::io::Error::other(format!(
                        "no column {n:?} to pass through (output.passthrough)"
                    )),
                })),
            })
            .collect()
    }

    /// Opens the input in its format (JSON Lines only, where the backend's
    /// schema answers every line or needs a value unique per line).
    fn open_input(&self) -> Result<Input, RunError> {
        let i = &self.config.input;
        let input = Input::open(&i.path, i.format.map(|f| f.0), i.columns.as_deref())?;
        if matches!(input, Input::Table(_)) && self.backend.schema().needs_lines() {
            return Err(ConfigErrors {
                path: self.config_path.clone(),
                problems: vec![crate::config::ConfigProblem::new(
                    "input.path",
                    format!(
                        "{} is a table (Parquet or Arrow); this backend's schema reads JSON \
                         Lines (plain, .gz or .zst), one request per line",
                        i.path.display()
                    ),
                )],
            }
            .into());
        }
        Ok(input)
    }

    /// Whether `on_error = "skip"` goes on past the bad rows that
    /// [`Job::validate`] finds (not where every line is answered, and only
    /// a repeated unique value is refused).
    pub fn bad_rows_skippable(&self) -> bool {
        !self.backend.schema().needs_lines()
    }

    /// Checks every input row against the backend's schema, and that the
    /// object store holds each row alone (a plain JSON Lines file); loads
    /// no model.
    pub fn validate(&self) -> Result<Validation, RunError> {
        self.check_locations()?;
        let input = self.open_input()?;
        self.passthrough_types(&input)?;
        let v = validate_file(&input, &self.source_schema(), &self.limits())?;
        self.check_room_for_each_row(&input)?;
        // An output prefix in object storage: listed and written to.
        if let OutputDir::Staged(s) = OutputDir::inspecting(&self.config)? {
            s.check_writable()?;
        }
        Ok(v)
    }

    /// Refuses a `memory.object_store` smaller than what one row of the
    /// input needs alone (its input and its output's bound, as the
    /// Scheduler reserves them): every batch holding it would need more,
    /// so the run could only fail. Plain JSON Lines only (one more read,
    /// counting bytes and `"`s).
    fn check_room_for_each_row(&self, input: &Input) -> Result<(), RunError> {
        let Input::Mapped(file) = input else {
            return Ok(());
        };
        let columns = self.output_columns(Some(input))?;
        let (limits, lists) = (self.limits(), columns.request.has_lists());
        let budget = self.config.memory.object_store.as_usize();
        let data = file.bytes();
        let mut worst: Option<(usize, u64)> = None;
        for line in Lines::new(data, data_start(data), 1) {
            let len = line.bytes.len();
            if line.is_blank() || len > limits.max_line_bytes {
                continue;
            }
            let quotes = if lists {
                line.bytes.iter().filter(|&&b| b == b'"').count()
            } else {
                0
            };
            let need = batch_need(self.backend.as_ref(), &columns, 1, len, quotes);
            if need > budget && worst.is_none_or(|(w, _)| need > w) {
                worst = Some((need, line.number));
            }
        }
        file.release(0, data.len());
        file.check()?;
        match worst {
            None => Ok(()),
            Some((need, line)) => Err(ConfigErrors {
                path: self.config_path.clone(),
                problems: vec![crate::config::ConfigProblem::new(
                    "memory.object_store",
                    format!(
                        "{budget} bytes cannot hold line {line} of {} alone: it needs {need} bytes \
                         (its input and its output's bound); raise it to at least {need} bytes",
                        self.config.input.path.display()
                    ),
                )],
            }
            .into()),
        }
    }

    /// Refuses an `output.assemble` file that is the input (or inside an
    /// input directory) or inside the output directory (where it would
    /// replace a manifest, a part, or make the directory not stook's), and
    /// an output directory that is the input or inside it.
    fn check_locations(&self) -> Result<(), RunError> {
        let o = &self.config.output;
        let input = resolved(&self.config.input.path);
        let output = resolved(&o.path);
        let refuse = |key: &str, message: String| -> Result<(), RunError> {
            Err(ConfigErrors {
                path: self.config_path.clone(),
                problems: vec![crate::config::ConfigProblem::new(key, message)],
            }
            .into())
        };
        if output.starts_with(&input) {
            return refuse(
                "output.path",
                format!(
                    "{} is the input or inside it ({}); choose a directory of its own",
                    o.path.display(),
                    self.config.input.path.display()
                ),
            );
        }
        if let Some(a) = &o.assemble {
            let target = resolved(a);
            if target.starts_with(&input) {
                return refuse(
                    "output.assemble",
                    format!(
                        "{} is the input or inside it ({}): it would be overwritten",
                        a.display(),
                        self.config.input.path.display()
                    ),
                );
            }
            if target.starts_with(&output) {
                return refuse(
                    "output.assemble",
                    format!(
                        "{} is inside the output directory {}, which holds stook's own files \
                         only; assemble beside it",
                        a.display(),
                        o.path.display()
                    ),
                );
            }
        }
        Ok(())
    }

    /// Counts the input's rows (fast: no row is parsed; a table's count is
    /// in its metadata) and lays them out in batches and shards.
    pub fn layout(&self) -> Result<Layout, RunError> {
        let input = self.open_input()?;
        let rows = input.count_rows(&self.source_schema(), &self.limits())?;
        Ok(self.layout_of(rows))
    }

    /// `rows` input rows in this job's batches and shards.
    fn layout_of(&self, rows: u64) -> Layout {
        let c = &self.config;
        Layout::new(rows, c.batch.size as u64, c.shard_batches())
    }

    /// Where the job's output stands: shards committed per worker, what is
    /// missing. Reads the manifests; loads no model.
    pub fn status(&self) -> Result<Status, RunError> {
        let header = output::header_for(&self.config, self.backend.as_ref(), Worker::ALONE)?;
        let out = OutputDir::inspecting(&self.config)?;
        Ok(out.status(&header, self.layout()?)?)
    }

    /// Once every worker's shards are committed: verifies every part and
    /// writes the final output (`_errors.jsonl`, the `output.assemble`
    /// file, `_SUCCESS`). Refused, naming the missing shards, otherwise.
    pub fn merge(&self) -> Result<Totals, RunError> {
        self.check_locations()?;
        let header = output::header_for(&self.config, self.backend.as_ref(), Worker::ALONE)?;
        let cfg = &self.config;
        let out = OutputDir::inspecting(cfg)?;
        Ok(out.merge(&header, self.layout()?, cfg.output.assemble.as_deref())?)
    }

    /// Runs the job in a new `actix::System` on this thread.
    pub fn run_blocking(&self, control: RunControl) -> Result<RunReport, RunError> {
        actix::System::new().block_on(self.run(control))
    }

    /// Runs the job inside the current `actix::System`.
    pub async fn run(&self, control: RunControl) -> Result<RunReport, RunError> {
        let started = Instant::now();
        let cfg = &self.config;
        let worker = control.worker;
        self.check_locations()?;
        if !worker.is_alone() && !cfg.output.preserve_order {
            return Err(ConfigErrors {
                path: self.config_path.clone(),
                problems: vec![crate::config::ConfigProblem::new(
                    "output.preserve_order",
                    "a job split among workers needs true (each shard is a fixed range of rows)",
                )],
            }
            .into());
        }

        // 1. Every row, before any model loads (on_error = "fail"); off
        //    the host's thread, as is all file work below.
        let input = self.open_input()?;
        let pass_types = self.passthrough_types(&input)?;
        let columns = self.output_columns(Some(&input))?;
        let (schema2, limits) = (self.source_schema(), self.limits());
        // A value that must be unique per row is checked whatever on_error.
        let check = cfg.batch.on_error == OnError::Fail || schema2.unique.is_some();
        let (input, rows_total) = off_thread(move || {
            let rows = count_rows(&input, &schema2, &limits, check);
            (input, rows)
        })
        .await?;
        let rows_total = rows_total?;
        let layout = self.layout_of(rows_total);
        control.progress.set_total(layout.rows_of(worker));
        if !worker.is_alone() {
            tracing::info!(
                %worker,
                shards = (0..layout.shards()).filter(|&s| worker.owns(s)).count(),
                of = layout.shards(),
                "worker's slice"
            );
        }

        // 2. Devices, refused before any model loads.
        let devices = self.devices()?;

        // 3. The output directory (new, or resumed) and the store.
        let header = output::header_for(cfg, self.backend.as_ref(), worker)?;
        let out = Arc::new(OutputDir::of(cfg, worker)?);
        let prepared = {
            let (out, header, fresh) = (out.clone(), header.clone(), control.fresh);
            let resume = cfg.checkpoint.resume;
            off_thread(move || out.prepare(&header, fresh, resume)).await??
        };
        let resume = prepared.resume;
        let todo = Todo {
            done: resume.done_batches.clone(),
            worker,
            shard_batches: cfg.shard_batches(),
        };
        if !resume.done_shards.is_empty() {
            tracing::info!(
                shards = resume.done_shards.len(),
                rows = resume.done_rows,
                redone = prepared.redone.len(),
                "resuming"
            );
        }
        control
            .progress
            .resumed(resume.done_rows, resume.done_errors);
        let sink_cfg = SinkConfig {
            dir: out.dir().to_path_buf(),
            preserve_order: cfg.output.preserve_order,
            todo,
            done_shards: resume.done_shards.clone(),
            stream: None,
            format: cfg.output.format.0,
            table: self.table_schema(&columns, &pass_types),
            name_width: stook_actors::checkpoint::name_width(layout.shards()),
            publish: out.staged(),
        };
        let (summary, stats, workers_rss) = self
            .pipeline(
                &control,
                Feed::Input(input),
                sink_cfg,
                columns,
                &devices,
                header.input.content_key().into(),
            )
            .await?;
        let totals = if worker.is_alone() {
            let (out, assemble) = (out.clone(), cfg.output.assemble.clone());
            off_thread(move || out.merge(&header, layout, assemble.as_deref())).await??
        } else {
            output::worker_totals(out.dir(), worker)?
        };
        let report = RunReport::new(
            cfg,
            RunFacts {
                sink: &summary,
                totals: &totals,
                rows_resumed: resume.done_rows,
                progress: control.progress.snapshot(),
                store: &stats,
                wall: started.elapsed(),
                peak_rss_bytes: peak_rss_bytes(),
                peak_workers_rss_bytes: workers_rss,
                devices: &devices,
                worker,
            },
        );
        out.write(
            &worker.file_name(REPORT_STEM, "json"),
            report.to_json().as_bytes(),
        )?;
        drop(prepared.lock);
        Ok(report)
    }

    /// Runs the job over rows from memory instead of `input.path`, sending
    /// results in order to `results` instead of files (no output directory,
    /// manifest or resume). Rows are pulled only as batches are admitted,
    /// and a batch stays admitted until `results` takes it, so a slow
    /// consumer stops the producer. With `on_error = "fail"` a bad row stops
    /// the run when it is reached (rows cannot be checked ahead).
    pub async fn run_rows(
        &self,
        rows: RowFeed,
        results: ResultSender,
        control: RunControl,
    ) -> Result<RunReport, RunError> {
        let started = Instant::now();
        let devices = self.devices()?;
        let columns = self.output_columns(None)?;
        let todo = Todo {
            shard_batches: self.config.shard_batches(),
            ..Todo::default()
        };
        let sink_cfg = SinkConfig {
            dir: PathBuf::new(),
            preserve_order: self.config.output.preserve_order,
            todo,
            done_shards: Default::default(),
            stream: Some(results),
            format: self.config.output.format.0,
            table: self.table_schema(&columns, &[]),
            // No files: results go to the stream.
            name_width: 5,
            publish: None,
        };
        let (summary, stats, workers_rss) = self
            .pipeline(
                &control,
                Feed::Rows {
                    name: "rows".into(),
                    rows,
                },
                sink_cfg,
                columns,
                &devices,
                Arc::from(""),
            )
            .await?;
        let totals = Totals {
            rows: summary.rows_written + summary.errors,
            errors: summary.errors,
            ..Totals::default()
        };
        Ok(RunReport::new(
            &self.config,
            RunFacts {
                sink: &summary,
                totals: &totals,
                rows_resumed: 0,
                progress: control.progress.snapshot(),
                store: &stats,
                wall: started.elapsed(),
                peak_rss_bytes: peak_rss_bytes(),
                peak_workers_rss_bytes: workers_rss,
                devices: &devices,
                worker: Worker::ALONE,
            },
        ))
    }

    /// Runs the actors over `feed` ([`stook_actors::pipeline`]) and waits
    /// for the outcome; every thread is joined.
    async fn pipeline(
        &self,
        control: &RunControl,
        feed: Feed,
        sink: SinkConfig,
        columns: OutputColumns,
        devices: &[Device],
        input_key: Arc<str>,
    ) -> Result<(SinkSummary, StoreStats, u64), RunError> {
        let cfg = &self.config;
        let workers = WorkerMemory::start();
        let running = pipeline::start(PipelineConfig {
            feed,
            backend: self.backend.clone(),
            devices: devices.to_vec(),
            shared_model: match cfg.batch.compute {
                Compute::Actors => None,
                Compute::Tasks => Some(control.shared_model.clone().unwrap_or_default()),
            },
            columns,
            store_bytes: cfg.memory.object_store.as_usize(),
            holder_accounting: cfg.memory.holder_accounting,
            batch_size: cfg.batch.size,
            limits: self.limits(),
            skip_bad_rows: cfg.batch.on_error == OnError::Skip,
            max_retries: cfg.batch.max_retries,
            reorder_window: cfg.output.preserve_order.then(|| cfg.batch.window()),
            timeout: cfg.batch.timeout.map(|t| t.0),
            input_name: cfg.input.path.display().to_string().into(),
            input_key,
            sink,
            progress: control.progress.clone(),
            cancel: control.cancel.clone(),
        })?;
        let (outcome, stats) = running.finish().await;
        Ok((outcome?, stats, workers.finish()))
    }

    fn devices(&self) -> Result<Vec<Device>, RunError> {
        let b = &self.config.batch;
        let choice = b.device.unwrap_or(if b.num_gpus_per_actor > 0.0 {
            DeviceChoice::Cuda
        } else {
            DeviceChoice::Cpu
        });
        if choice == DeviceChoice::Cpu {
            tracing::info!("running on the CPU (batch.device)");
            return Ok(vec![Device::Cpu; b.num_actors]);
        }
        let inventory = GpuInventory::probe();
        if let Some(why) = &inventory.unavailable {
            tracing::warn!(reason = %why, "no GPU inventory");
        }
        let per_actor = if b.num_gpus_per_actor > 0.0 {
            b.num_gpus_per_actor
        } else {
            1.0
        };
        let built = cfg!(feature = "cuda");
        let devices = match choice {
            DeviceChoice::Auto if inventory.gpus.is_empty() || !built => {
                tracing::warn!(
                    "batch.device = \"auto\": {}, running on the CPU",
                    if built {
                        "no GPU found"
                    } else {
                        "stook was built without CUDA"
                    }
                );
                return Ok(vec![Device::Cpu; b.num_actors]);
            }
            DeviceChoice::CudaIndex(i) => {
                if !inventory.gpus.iter().any(|g| g.index == i) {
                    return Err(PipelineError::from(DeviceError::NoSuchGpu {
                        index: i,
                        found: inventory.gpus.len(),
                        why: inventory.unavailable.clone(),
                    })
                    .into());
                }
                vec![Device::Cuda(i); b.num_actors]
            }
            _ => inventory
                .assign(b.num_actors, per_actor)
                .map_err(PipelineError::from)?,
        };
        if !built {
            return Err(PipelineError::from(DeviceError::NotBuiltWithCuda {
                asked: String::from(choice),
            })
            .into());
        }
        Ok(devices)
    }
}

/// Runs `f` on a thread of its own and waits for it without blocking the
/// caller's thread (the host's event loop, when stook is embedded).
async fn off_thread<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, RunError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let thread = std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    let r = rx.await;
    let _ = thread.join();
    r.map_err(|_| RunError::Pipeline(PipelineError::ActorGone("file worker thread")))
}

fn validate_file(
    input: &Input,
    schema: &stook_actors::RequestSchema,
    limits: &RowLimits,
) -> Result<Validation, RunError> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let v = input.validate(schema, limits, threads, ERRORS_SHOWN)?;
    if v.rows == 0 {
        return Err(RunError::NoRows {
            path: input.path().to_path_buf(),
        });
    }
    Ok(v)
}

/// The input's rows: every row checked when `check` (any bad one refused),
/// else only counted.
fn count_rows(
    input: &Input,
    schema: &stook_actors::RequestSchema,
    limits: &RowLimits,
    check: bool,
) -> Result<u64, RunError> {
    if check {
        let v = validate_file(input, schema, limits)?;
        if v.error_count > 0 {
            return Err(RunError::InvalidInput {
                errors: v.errors,
                count: v.error_count,
                skippable: !schema.needs_lines(),
            });
        }
        return Ok(v.rows);
    }
    match input.count_rows(schema, limits)? {
        0 => Err(RunError::NoRows {
            path: input.path().to_path_buf(),
        }),
        n => Ok(n),
    }
}

/// `path` with symlinks and `..` resolved as far as it exists (the rest
/// appended as written), so two spellings of one place compare equal.
fn resolved(path: &Path) -> PathBuf {
    let mut existing = path.to_path_buf();
    let mut rest = Vec::new();
    loop {
        if let Ok(p) = existing.canonicalize() {
            return rest.iter().rev().fold(p, |p, c| p.join(c));
        }
        match (existing.file_name(), existing.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name.to_os_string());
                existing = if parent.as_os_str().is_empty() {
                    PathBuf::from(".")
                } else {
                    parent.to_path_buf()
                };
            }
            _ => return path.to_path_buf(),
        }
    }
}
