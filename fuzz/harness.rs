//! The fuzz targets: every parser of outside input, each fed arbitrary
//! bytes through the same calls a run makes. A target may return any
//! error; it must not panic, hang or abort.
//!
//! Shared by the libFuzzer binaries (`fuzz/fuzz_targets/`, run by
//! `scripts/fuzz.sh`) and the bounded run in the test command
//! (`tests/fuzz.rs`).

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use stook::backends::{openai, sheaf};
use stook::{BackendRegistry, Job, JobConfig};
use stook_actors::batch::encode_input;
use stook_actors::checkpoint::{verify, Manifest};
use stook_actors::input::{Input, RowLimits};
use stook_actors::rows::{parse_row, Lines, ParsedRow};
use stook_actors::{ObjectStore, RequestBatch, RequestSchema};

/// A fuzz target: any bytes in, no panic.
pub type Target = fn(&[u8]);

/// Every target, by name.
pub const TARGETS: &[(&str, Target)] = &[
    ("jsonl", jsonl),
    ("requests", requests),
    ("gzip", gzip),
    ("zstd", zstd),
    ("parquet", parquet),
    ("arrow", arrow),
    ("manifest", manifest),
    ("config", config),
];

/// A plain JSON Lines input with a text schema (an `id` passed through):
/// opened, counted and validated as `stook validate` and a run do.
pub fn jsonl(data: &[u8]) {
    let path = scratch("in.jsonl", data);
    read_input(&path, &RequestSchema::text_with_id("text", "id"));
}

/// Request files: the first byte picks sheaf-serve's or OpenAI's batch
/// schema; the rest is validated as a file, then each line is parsed,
/// encoded as the Source encodes it and read as the backend reads it.
pub fn requests(data: &[u8]) {
    let Some((&pick, lines)) = data.split_first() else {
        return;
    };
    let schema = if pick % 2 == 0 {
        sheaf::schema()
    } else {
        openai::schema()
    };
    let path = scratch("in.jsonl", lines);
    read_input(&path, &schema);
    let rows: Vec<(u64, u64, ParsedRow<'_>)> = Lines::new(lines, 0, 1)
        .filter(|l| !l.is_blank() && l.bytes.len() <= LIMITS.max_line_bytes)
        .enumerate()
        .map(|(i, l)| {
            let parsed = parse_row(l.bytes, &schema)
                .unwrap_or_else(|p| ParsedRow::answered(&schema, l.number, p));
            (i as u64, l.number, parsed)
        })
        .filter(|(_, _, p)| schema.answer_bad_rows || p.problem.is_none())
        .collect();
    if rows.is_empty() {
        return;
    }
    STORE.with(|store| {
        let bound = stook_actors::batch::input_bound(&schema, rows.len(), lines.len());
        let Ok(Some(room)) = store.try_reserve(bound) else {
            return;
        };
        let obj = encode_input(&schema, &rows, room).expect("encoding parsed rows");
        assert!(
            obj.len() <= bound,
            "{} bytes over a bound of {bound}",
            obj.len()
        );
        let batch = RequestBatch::decode(&obj, &schema)
            .expect("decoding what was encoded")
            .with_input_key("fuzz".into());
        for i in 0..batch.len() {
            if pick % 2 == 0 {
                let raw = batch.field(sheaf::TEXTS, i).unwrap_or("[]");
                let _ = serde_json::from_str::<Vec<String>>(raw);
            } else if batch.problem(i).is_none() {
                let _ = openai::endpoint(&batch, i, &["/v1/embeddings"]);
                let _ = openai::request(&batch, i, 384);
            }
        }
    });
}

/// gzip input: odd first byte, the rest is the compressed stream as is;
/// even, the rest is JSON Lines that is compressed here first (so the
/// line reader behind the decoder is reached too).
pub fn gzip(data: &[u8]) {
    compressed(data, "in.jsonl.gz", |plain| {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(plain).unwrap();
        e.finish().unwrap()
    });
}

/// zstd input, as [`gzip`].
pub fn zstd(data: &[u8]) {
    compressed(data, "in.jsonl.zst", |plain| {
        zstd::bulk::compress(plain, 1).unwrap()
    });
}

/// A Parquet file: its footer, schema check, every row converted.
pub fn parquet(data: &[u8]) {
    let path = scratch("in.parquet", data);
    read_input(&path, &RequestSchema::text_with_id("text", "id"));
}

/// An Arrow IPC file, as [`parquet`].
pub fn arrow(data: &[u8]) {
    let path = scratch("in.arrow", data);
    read_input(&path, &RequestSchema::text_with_id("text", "id"));
}

/// A checkpoint manifest read back on resume: parsed, its header compared
/// with itself, each record's part verified (there is none: an error).
pub fn manifest(data: &[u8]) {
    let path = scratch("_manifest.jsonl", data);
    let dir = path.parent().unwrap();
    if let Ok(Some(m)) = Manifest::read(dir, "_manifest.jsonl") {
        assert!(m.header.refuse(&m.header).is_none());
        let _ = m.header.input.content_key();
        for s in &m.shards {
            assert!(verify(dir, s).is_err(), "verified a part that is not there");
        }
    }
    let _ = Manifest::read_all(dir);
}

/// A job's TOML config: loaded (size and UTF-8 bounds, every key), then
/// the job built from it (backend options checked; no model is loaded and
/// no input opened).
pub fn config(data: &[u8]) {
    let path = scratch("job.toml", data);
    if let Ok(cfg) = JobConfig::load(&path) {
        let _ = Job::new(cfg, &BackendRegistry::with_builtins(), &path);
    }
}

const LIMITS: RowLimits = RowLimits {
    max_line_bytes: 4096,
};

thread_local! {
    static STORE: ObjectStore = ObjectStore::new(64 << 20).expect("an object store");
}

fn compressed(data: &[u8], name: &str, compress: fn(&[u8]) -> Vec<u8>) {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let bytes = if pick % 2 == 1 {
        rest.to_vec()
    } else {
        compress(rest)
    };
    let path = scratch(name, &bytes);
    read_input(&path, &RequestSchema::text_with_id("text", "id"));
}

/// What a run does with an input before and while reading it.
fn read_input(path: &Path, schema: &RequestSchema) {
    let Ok(input) = Input::open(path, None, None) else {
        return;
    };
    let counted = input.count_rows(schema, &LIMITS);
    if let Ok(v) = input.validate(schema, &LIMITS, 2, 10) {
        if let Ok(n) = counted {
            assert_eq!(n, v.rows, "rows counted and rows validated differ");
        }
        assert!(v.errors.len() as u64 <= v.error_count.min(10));
    }
}

/// Writes `data` to `name` in this thread's scratch directory.
fn scratch(name: &str, data: &[u8]) -> PathBuf {
    thread_local! {
        static DIR: tempfile::TempDir = {
            let shm = Path::new("/dev/shm");
            let base = if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() };
            tempfile::Builder::new().prefix("stook-fuzz-").tempdir_in(base).expect("a scratch directory")
        };
    }
    let path = DIR.with(|d| d.path().join(name));
    std::fs::write(&path, data).expect("writing a scratch file");
    path
}
