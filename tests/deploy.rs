//! The deploy/ examples say what the workers rely on: checked by parsing
//! them (the Slurm array itself runs in tests/slurm.rs).

use std::path::Path;

use serde_yaml::Value;
use stook::JobConfig;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn documents(path: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(root().join(path)).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap_or_else(|e| panic!("{path}: {e}")))
        .collect()
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_sequence()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect()
}

/// The data volume's mount path in a pod spec.
fn data_mount(pod: &Value) -> String {
    let volume = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["persistentVolumeClaim"]["claimName"].is_string())
        .expect("a persistent volume");
    let name = &volume["name"];
    pod["containers"][0]["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| &m["name"] == name)
        .expect("the volume mounted")["mountPath"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn the_kubernetes_indexed_job_gives_each_pod_a_worker_and_a_shared_volume() {
    let docs = documents("deploy/kubernetes/stook-job.yaml");
    let config_text = kind(&docs, "ConfigMap")["data"]["job.toml"]
        .as_str()
        .unwrap();
    let config = JobConfig::from_toml(config_text, Path::new("/"))
        .unwrap_or_else(|p| panic!("the ConfigMap's job.toml: {p:?}"));

    let job = kind(&docs, "Job");
    let spec = &job["spec"];
    assert_eq!(spec["completionMode"], "Indexed");
    let completions = spec["completions"].as_u64().unwrap();
    assert_eq!(spec["parallelism"].as_u64(), Some(completions));
    assert!(
        spec["backoffLimitPerIndex"].as_u64().unwrap() >= 1,
        "failed indexes are retried"
    );
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["restartPolicy"], "Never");
    let container = &pod["containers"][0];
    let command = strings(&container["command"]);
    assert_eq!(&command[..3], ["stook", "run", "/config/job.toml"]);
    // The count Kubernetes does not export, twice: the flag and the config.
    let at = command
        .iter()
        .position(|a| *a == "--shards")
        .expect("--shards N");
    assert_eq!(command[at + 1].parse::<u64>().unwrap(), completions);
    assert_eq!(config.checkpoint.workers, Some(completions));
    let env = container["env"].as_sequence().unwrap();
    let index = env
        .iter()
        .find(|e| e["name"] == "JOB_COMPLETION_INDEX")
        .expect("JOB_COMPLETION_INDEX");
    assert_eq!(
        index["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    );
    // Input and output on the volume every pod shares.
    let mount = data_mount(pod);
    assert!(
        config.input.path.starts_with(&mount),
        "{:?}",
        config.input.path
    );
    assert!(
        config.output.path.starts_with(&mount),
        "{:?}",
        config.output.path
    );
    assert!(config.output.preserve_order);

    let merge_docs = documents("deploy/kubernetes/stook-merge.yaml");
    let merge = &kind(&merge_docs, "Job")["spec"]["template"]["spec"];
    assert_eq!(
        strings(&merge["containers"][0]["command"]),
        ["stook", "merge", "/config/job.toml"]
    );
    assert_eq!(data_mount(merge), mount);
}

#[test]
fn the_slurm_array_runs_one_worker_per_task() {
    let text = std::fs::read_to_string(root().join("deploy/slurm/stook-array.sbatch")).unwrap();
    assert!(text.starts_with("#!/bin/bash"));
    assert!(text.contains("\n#SBATCH --array=0-3\n"), "{text}");
    assert!(text.contains("\n#SBATCH --requeue\n"), "{text}");
    // The worker comes from SLURM_ARRAY_TASK_ID: no --shard in the script.
    assert!(text.contains("exec \"$STOOK\" run \"$CONFIG\""), "{text}");
    let submit = std::fs::read_to_string(root().join("deploy/slurm/submit.sh")).unwrap();
    assert!(submit.contains("--dependency=\"afterok:"), "{submit}");
    assert!(submit.contains("merge"), "{submit}");
}

#[test]
fn the_object_storage_variants_need_no_shared_volume() {
    let docs = documents("deploy/kubernetes/stook-job-s3.yaml");
    let text = kind(&docs, "ConfigMap")["data"]["job.toml"]
        .as_str()
        .unwrap();
    let config = JobConfig::from_toml(text, Path::new("/"))
        .unwrap_or_else(|p| panic!("the ConfigMap's job.toml: {p:?}"));
    for p in [&config.input.path, &config.output.path] {
        assert!(p.to_str().unwrap().starts_with("s3://"), "{p:?}");
    }
    let pod = &kind(&docs, "Job")["spec"]["template"]["spec"];
    let yaml = serde_yaml::to_string(pod).unwrap();
    assert!(!yaml.contains("persistentVolumeClaim"), "{yaml}");
    let container = &pod["containers"][0];
    assert_eq!(
        container["envFrom"][0]["secretRef"]["name"], "stook-s3",
        "credentials from a Secret"
    );
    // The staging directory is on the pod's own scratch volume.
    let scratch = container["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "scratch")
        .expect("a scratch mount");
    let staging = config.output.staging.as_ref().expect("output.staging");
    assert!(staging.starts_with(scratch["mountPath"].as_str().unwrap()));
    let merge_docs = documents("deploy/kubernetes/stook-merge-s3.yaml");
    let merge = &kind(&merge_docs, "Job")["spec"]["template"]["spec"];
    assert_eq!(
        strings(&merge["containers"][0]["command"]),
        ["stook", "merge", "/config/job.toml"]
    );
    assert_eq!(merge["volumes"][1]["configMap"]["name"], "stook-config-s3");

    let slurm = JobConfig::load(&root().join("deploy/slurm/job-s3.toml"))
        .unwrap_or_else(|p| panic!("deploy/slurm/job-s3.toml: {p:?}"));
    assert!(slurm.input.path.to_str().unwrap().starts_with("s3://"));
    assert!(slurm.output.path.to_str().unwrap().starts_with("s3://"));
}
