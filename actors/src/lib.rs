//! The actors of stook and the object store they share.
//!
//! ```text
//!  input ──mmap──▶ Source ──put──▶ ObjectStore ◀──get── BackendActor × N ──put──▶ ObjectStore
//!                    │  asks for a grant          ▲          ▲ pulls work                 │
//!                    └────────▶ Scheduler ────────┴──────────┘                           ▼
//!                               (admission, dispatch, retries)                 Sink ──▶ part files
//! ```
//!
//! Every actor lives in its own file: [`source`], [`scheduler`], [`backend`],
//! [`sink`]; the messages between them are in [`messages`]. The
//! [`store`] is a shared value rather than an actor, because reference counts
//! must change synchronously. Row data exists only in the store, except the
//! batch a backend is computing on (its result builder) and the batch the
//! Source is encoding.

#![warn(missing_docs)]

pub mod backend;
pub mod batch;
pub mod checkpoint;
pub mod devices;
pub mod error;
pub mod input;
pub mod json_lines;
pub mod messages;
pub mod model;
pub mod parts;
pub mod pipeline;
pub mod progress;
pub mod remote;
pub mod results;
pub mod rows;
pub mod scheduler;
pub mod sink;
pub mod source;
pub mod store;

pub use backend::{BackendActor, SharedModel};
pub use batch::RequestBatch;
pub use devices::{Device, DeviceError, GpuInventory};
pub use error::{PipelineError, StoreError};
pub use model::{Backend, Model, ModelError};
pub use progress::{Progress, ProgressEvent, ProgressSnapshot};
pub use results::{OutputColumns, ResultWriter};
pub use rows::{FieldKind, FieldSpec, RequestSchema, RowError};
pub use store::{Holder, ObjectRef, ObjectStore, Reservation, StoreStats};
