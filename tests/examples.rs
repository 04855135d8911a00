//! Every config in config/ loads, validates and runs as it is (only the
//! output directory and the assembled file are moved to a temporary
//! directory, into folders that do not exist yet, as on a fresh clone).

mod common;

use std::path::Path;

use stook::{BackendRegistry, Job, JobConfig, RunControl};

#[test]
fn every_shipped_config_runs() {
    let dir = common::tempdir();
    let mut n = 0;
    let mut assemble = Vec::new();
    for entry in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("config")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let mut config = JobConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let stem = path.file_stem().unwrap();
        config.output.path = dir.path().join(stem);
        if let Some(a) = &config.output.assemble {
            let moved = dir
                .path()
                .join("assembled")
                .join(stem)
                .join(a.file_name().unwrap());
            config.output.assemble = Some(moved.clone());
            assemble.push(moved);
        }
        let job = Job::new(config, &BackendRegistry::with_builtins(), &path).unwrap();
        let v = job.validate().unwrap();
        assert_eq!(v.error_count, 0, "{}", path.display());
        let report = job.run_blocking(RunControl::default()).unwrap();
        assert_eq!(report.rows, v.rows, "{}", path.display());
        n += 1;
    }
    assert!(n >= 1, "no config found");
    for a in assemble {
        assert!(a.is_file(), "{} was not assembled", a.display());
    }
}
