//! The deploy/ Slurm job array on a real, single-node Slurm cluster started
//! for this test (scripts/slurm-cluster.sh: Debian's slurm-wlm and munge,
//! installed by scripts/test.sh): `sbatch --array=0-3 --wait`, then `stook
//! merge`, byte-identical to one process. Where Slurm cannot run, this test
//! fails and says why; it never passes without a cluster.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/slurm-cluster.sh")
}

/// Stops the cluster's daemons however the test ends.
struct Cluster(PathBuf);

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(script()).arg("stop").arg(&self.0).status();
    }
}

fn write_job(dir: &Path, name: &str, input: &Path) -> PathBuf {
    let p = dir.join(format!("{name}.toml"));
    let out = dir.join(name);
    let all = dir.join(format!("{name}-all.jsonl"));
    std::fs::write(
        &p,
        format!(
            "[input]\npath = {input:?}\n[output]\npath = {out:?}\nassemble = {all:?}\n\
             [model]\nbackend = \"synthetic\"\n[model.options]\nbatch_ms = 2\n\
             [batch]\nsize = 200\nnum_actors = 1\n[checkpoint]\nshard_rows = 2000\n"
        ),
    )
    .unwrap();
    p
}

#[test]
fn a_slurm_job_array_then_merge_gives_one_process_bytes() {
    for tool in ["slurmctld", "slurmd", "munged", "sbatch"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "SLURM NOT INSTALLED: {tool} is missing. This test needs Debian's slurm-wlm and munge \
             (`scripts/slurm-cluster.sh install`, as root, which scripts/test.sh runs)"
        );
    }
    let dir = tempdir();
    let cluster_dir = dir.path().join("cluster");
    let o = Command::new(script())
        .arg("start")
        .arg(&cluster_dir)
        .output()
        .unwrap();
    let _cluster = Cluster(cluster_dir.clone());
    assert!(
        o.status.success(),
        "SLURM CANNOT RUN HERE: the single-node cluster did not start:\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let slurm_conf = cluster_dir.join("slurm.conf");

    let input = write_rows(dir.path(), "in.jsonl", 40_000);
    let single = write_job(dir.path(), "single", &input);
    let o = Command::new(stook_bin())
        .args(["run", single.to_str().unwrap(), "--shard", "0/1"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let split = write_job(dir.path(), "split", &input);
    let sbatch = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/slurm/stook-array.sbatch");
    let o = Command::new("sbatch")
        .args(["--array=0-3", "--wait", "--cpus-per-task=1", "--mem=500M"])
        .arg(format!("--output={}/task-%a.log", dir.path().display()))
        .arg(&sbatch)
        .env("SLURM_CONF", &slurm_conf)
        .env("STOOK", stook_bin())
        .env("CONFIG", &split)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let logs: String = (0..4)
        .map(|i| {
            let p = dir.path().join(format!("task-{i}.log"));
            format!(
                "--- task {i}\n{}",
                std::fs::read_to_string(p).unwrap_or_default()
            )
        })
        .collect();
    assert!(
        o.status.success(),
        "sbatch --wait failed: {}{}\n{logs}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    for i in 0..4 {
        assert!(
            logs.contains(&format!("stook: worker {i}/4 (SLURM_ARRAY_TASK_ID={i}")),
            "task {i} did not run as worker {i}/4:\n{logs}"
        );
    }
    let o = Command::new(stook_bin())
        .args(["merge", split.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let reference = std::fs::read(dir.path().join("single-all.jsonl")).unwrap();
    let merged = std::fs::read(dir.path().join("split-all.jsonl")).unwrap();
    assert!(
        merged == reference,
        "the array's merged output differs from one process's"
    );
    assert_synthetic_rows(&merged, 40_000);
}
