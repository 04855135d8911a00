//! Two jobs embedded at once in one host System: both outputs right, both
//! budgets kept, events delivered, and afterwards the System still runs
//! with no thread, file descriptor or shared-memory segment of the jobs
//! left. One test in its own binary, so no other test's threads count.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use common::*;
use stook::{BackendRegistry, ByteSize, Job, ProgressEvent, RunControl};

#[test]
fn two_jobs_in_one_system_keep_their_budgets_and_leave_nothing() {
    let dir = tempdir();
    let input_a = write_rows(dir.path(), "a.jsonl", 30_000);
    let input_b = write_rows(dir.path(), "b.jsonl", 20_000);
    // Warm up once: lazily created process-wide things are not the jobs'.
    run(synthetic_config(&input_b, &dir.path().join("warm"), "")).unwrap();
    let (threads, fds, shm) = (
        count("/proc/self/task"),
        count("/proc/self/fd"),
        shm_entries(),
    );

    let budgets = [ByteSize(512 << 10), ByteSize(4 << 20)];
    let mut a = synthetic_config(&input_a, &dir.path().join("a"), "row_us = 20");
    a.memory.object_store = budgets[0];
    a.batch.size = 64;
    a.checkpoint.shard_rows = 5_000;
    let mut b = synthetic_config(&input_b, &dir.path().join("b"), "batch_ms = 2");
    b.memory.object_store = budgets[1];
    b.batch.num_actors = 3;

    let registry = BackendRegistry::with_builtins();
    let shards_seen = Arc::new(AtomicU64::new(0));
    let seen = shards_seen.clone();
    let (ra, rb, still_running) = actix::System::new().block_on(async move {
        let mut ha = Job::new(a, &registry, "a".as_ref())
            .unwrap()
            .start(RunControl::default());
        let hb = Job::new(b, &registry, "b".as_ref())
            .unwrap()
            .start(RunControl::default());
        let mut events = ha.events().unwrap();
        let reader = actix_rt::spawn(async move {
            let mut last = None;
            while let Some(e) = events.recv().await {
                match e {
                    ProgressEvent::ShardCommitted { .. } => {
                        seen.fetch_add(1, Ordering::SeqCst);
                    }
                    ProgressEvent::Progress { snapshot, .. } => last = Some(snapshot),
                }
            }
            last
        });
        let (ra, rb) = (ha.wait().await, hb.wait().await);
        let last = reader.await.unwrap().expect("a progress event");
        assert_eq!(
            last.rows_done, 30_000,
            "the last tick has the final counters"
        );
        // The host's System goes on after both jobs.
        let still_running = actix_rt::spawn(async { 42 }).await.unwrap();
        (ra.unwrap(), rb.unwrap(), still_running)
    });
    assert_eq!(still_running, 42);
    assert_eq!(shards_seen.load(Ordering::SeqCst), 6, "one event per shard");

    assert_synthetic_rows(&output_bytes(&dir.path().join("a")), 30_000);
    assert_synthetic_rows(&output_bytes(&dir.path().join("b")), 20_000);
    for (r, budget) in [(&ra, budgets[0]), (&rb, budgets[1])] {
        assert_eq!(r.store_budget_bytes, budget.0);
        assert!(
            r.peak_store_bytes <= budget.0,
            "{} > {}",
            r.peak_store_bytes,
            budget.0
        );
        assert_eq!(r.leaked_store_objects, 0);
    }
    assert_eq!(count("/proc/self/task"), threads, "threads left");
    assert_eq!(count("/proc/self/fd"), fds, "file descriptors left");
    assert_eq!(shm_entries(), shm, "/dev/shm changed");
}
