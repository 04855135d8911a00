//! Which worker this process is, from `--shard I/N` or from the cluster
//! scheduler's environment. The `stook` binary's alone: the library never
//! reads the environment.
//!
//! | Scheduler                  | Index                              | Count                                   |
//! |----------------------------|------------------------------------|-----------------------------------------|
//! | `--shard I/N`              | I                                  | N                                       |
//! | Slurm job array            | `SLURM_ARRAY_TASK_ID` − `_MIN`, ÷ `_STEP` | `SLURM_ARRAY_TASK_COUNT` (or from MIN, MAX, STEP) |
//! | Kubernetes Indexed Job     | `JOB_COMPLETION_INDEX`             | `--shards N` or `checkpoint.workers`    |

use stook::checkpoint::Worker;

/// The worker, and where it came from (empty: the whole job).
pub fn worker(
    shard: Option<&str>,
    shards: Option<u64>,
    config_workers: Option<u64>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<(Worker, String), String> {
    if let Some(s) = shard {
        let (i, n) = s
            .split_once('/')
            .ok_or_else(|| format!("--shard {s}: expected I/N, such as 0/4"))?;
        let num = |v: &str| {
            v.trim()
                .parse::<u64>()
                .map_err(|_| format!("--shard {s}: expected I/N with whole numbers, such as 0/4"))
        };
        let w = Worker::new(num(i)?, num(n)?).map_err(|e| format!("--shard {s}: {e}"))?;
        if shards.is_some_and(|c| c != w.count) {
            return Err(format!(
                "--shard {s} and --shards {} disagree",
                shards.unwrap_or(0)
            ));
        }
        return Ok((w, format!("--shard {s}")));
    }
    let var = |name: &str| -> Result<Option<u64>, String> {
        env(name)
            .map(|v| {
                v.trim()
                    .parse::<u64>()
                    .map_err(|_| format!("{name}={v}: expected a whole number"))
            })
            .transpose()
    };
    if let Some(id) = var("SLURM_ARRAY_TASK_ID")? {
        let min = var("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
        let step = var("SLURM_ARRAY_TASK_STEP")?.unwrap_or(1).max(1);
        let count = match (var("SLURM_ARRAY_TASK_COUNT")?, var("SLURM_ARRAY_TASK_MAX")?) {
            (Some(c), _) => c,
            (None, Some(max)) => (max.saturating_sub(min)) / step + 1,
            (None, None) => {
                return Err(
                    "SLURM_ARRAY_TASK_ID is set but neither SLURM_ARRAY_TASK_COUNT nor \
                            SLURM_ARRAY_TASK_MAX is: pass --shard I/N"
                        .into(),
                )
            }
        };
        let count = shards.unwrap_or(count);
        let index = id.checked_sub(min).map(|d| d / step).ok_or_else(|| {
            format!("SLURM_ARRAY_TASK_ID={id} is below SLURM_ARRAY_TASK_MIN={min}")
        })?;
        let w = Worker::new(index, count).map_err(|e| {
            format!("SLURM_ARRAY_TASK_ID={id} (array of {count} from {min}, step {step}): {e}")
        })?;
        return Ok((
            w,
            format!("SLURM_ARRAY_TASK_ID={id}, {count} array tasks from {min}"),
        ));
    }
    if let Some(index) = var("JOB_COMPLETION_INDEX")? {
        let count = shards.or(config_workers).ok_or(
            "JOB_COMPLETION_INDEX is set (a Kubernetes Indexed Job) but not the worker count: \
             pass --shards N (the Job's completions) or set checkpoint.workers",
        )?;
        let w =
            Worker::new(index, count).map_err(|e| format!("JOB_COMPLETION_INDEX={index}: {e}"))?;
        return Ok((
            w,
            format!("JOB_COMPLETION_INDEX={index}, {count} completions"),
        ));
    }
    if let Some(n) = shards {
        return Err(format!(
            "--shards {n} needs this worker's index: --shard I/{n}, or SLURM_ARRAY_TASK_ID or \
             JOB_COMPLETION_INDEX in the environment"
        ));
    }
    Ok((Worker::ALONE, String::new()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn with(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    fn w(i: u64, n: u64) -> Worker {
        Worker::new(i, n).unwrap()
    }

    #[test]
    fn the_flag_wins_and_is_checked() {
        let env = with(&[
            ("SLURM_ARRAY_TASK_ID", "3"),
            ("SLURM_ARRAY_TASK_COUNT", "8"),
        ]);
        assert_eq!(worker(Some("1/4"), None, None, &env).unwrap().0, w(1, 4));
        assert!(worker(Some("4/4"), None, None, &env)
            .unwrap_err()
            .contains("0 to 3"));
        assert!(worker(Some("a/4"), None, None, &env)
            .unwrap_err()
            .contains("I/N"));
        assert!(worker(Some("1/4"), Some(2), None, &env)
            .unwrap_err()
            .contains("disagree"));
        assert_eq!(
            worker(None, None, None, with(&[])).unwrap().0,
            Worker::ALONE
        );
    }

    #[test]
    fn slurm_arrays_give_index_and_count() {
        let env = with(&[
            ("SLURM_ARRAY_TASK_ID", "3"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
        ]);
        assert_eq!(worker(None, None, None, env).unwrap().0, w(3, 4));
        // --array=1-4: ids 1..4 are workers 0..3.
        let env = with(&[
            ("SLURM_ARRAY_TASK_ID", "4"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
            ("SLURM_ARRAY_TASK_MAX", "4"),
        ]);
        assert_eq!(worker(None, None, None, env).unwrap().0, w(3, 4));
        // --array=0-30:10: ids 0, 10, 20, 30.
        let env = with(&[
            ("SLURM_ARRAY_TASK_ID", "20"),
            ("SLURM_ARRAY_TASK_MIN", "0"),
            ("SLURM_ARRAY_TASK_MAX", "30"),
            ("SLURM_ARRAY_TASK_STEP", "10"),
        ]);
        assert_eq!(worker(None, None, None, env).unwrap().0, w(2, 4));
        let env = with(&[
            ("SLURM_ARRAY_TASK_ID", "x"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
        ]);
        assert!(worker(None, None, None, env)
            .unwrap_err()
            .contains("SLURM_ARRAY_TASK_ID=x"));
    }

    #[test]
    fn kubernetes_indexed_jobs_need_a_count() {
        let env = with(&[("JOB_COMPLETION_INDEX", "2")]);
        assert!(worker(None, None, None, &env)
            .unwrap_err()
            .contains("--shards N"));
        assert_eq!(worker(None, Some(3), None, &env).unwrap().0, w(2, 3));
        assert_eq!(worker(None, None, Some(5), &env).unwrap().0, w(2, 5));
        assert!(worker(None, Some(2), None, &env)
            .unwrap_err()
            .contains("out of range"));
        assert!(worker(None, Some(2), None, with(&[]))
            .unwrap_err()
            .contains("index"));
    }
}
