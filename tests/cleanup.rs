//! After a run returns, on every path, no thread, file descriptor,
//! shared-memory segment or temporary file of it is left. One test in its
//! own binary, so no other test's threads are counted.

mod common;

use std::path::Path;
use std::sync::atomic::Ordering;

use common::*;
use stook::config::Compute;
use stook::{BackendRegistry, Job, RunControl};

#[test]
fn nothing_is_left_after_success_failure_or_cancel() {
    let dir = tempdir();
    let input = write_rows(dir.path(), "in.jsonl", 2_000);
    // Warm up once: lazily created process-wide things (tracing, std) are
    // not the run's.
    run(synthetic_config(&input, &dir.path().join("warm"), "")).unwrap();
    let (threads, fds, shm) = (
        count("/proc/self/task"),
        count("/proc/self/fd"),
        shm_entries(),
    );

    let cases: [(&str, &str, bool); 3] = [
        ("ok", "", false),
        ("fails", "fail_ids = [1500]", false),
        ("cancelled", "batch_ms = 5", true),
    ];
    for (name, opts, cancel) in cases {
        let out = dir.path().join(name);
        let c = with_batching(
            synthetic_config(&input, &out, opts),
            10,
            Compute::Actors,
            3,
            1 << 20,
        );
        let job = Job::new(c, &BackendRegistry::with_builtins(), Path::new("t.toml")).unwrap();
        let control = RunControl::default();
        let flag = control.cancel.clone();
        let canceller = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            flag.store(cancel, Ordering::SeqCst);
        });
        let progress = control.progress.clone();
        let result = job.run_blocking(control);
        canceller.join().unwrap();
        if cancel {
            let done = progress.snapshot().rows_done;
            assert!(
                done > 0 && done < 2_000,
                "cancelled midway, {done} rows done"
            );
        }
        match name {
            "ok" => assert_eq!(result.unwrap().leaked_store_objects, 0),
            "fails" => assert!(result.unwrap_err().to_string().contains("row id 1500")),
            _ => assert!(result.unwrap_err().is_cancelled()),
        }
        assert_eq!(count("/proc/self/task"), threads, "{name}: threads left");
        assert_eq!(count("/proc/self/fd"), fds, "{name}: file descriptors left");
        assert_eq!(shm_entries(), shm, "{name}: /dev/shm changed");
        assert!(
            temporaries(&out).is_empty(),
            "{name}: {:?}",
            temporaries(&out)
        );
    }
}
