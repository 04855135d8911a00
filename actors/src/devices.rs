//! Where models run: GPUs found through NVML, chosen by free memory, or the
//! CPU. A pool that asks for more GPUs than exist is refused before any
//! model loads.

use std::fmt;

/// A device a model is loaded on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Device {
    /// The CPU.
    Cpu,
    /// A CUDA device by its NVML / CUDA index.
    Cuda(u32),
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// One GPU as NVML reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gpu {
    /// Its index.
    pub index: u32,
    /// Its name.
    pub name: String,
    /// Free memory in bytes.
    pub free: u64,
}

/// The GPUs of this machine, or why none could be listed.
#[derive(Clone, Debug)]
pub struct GpuInventory {
    /// The GPUs found.
    pub gpus: Vec<Gpu>,
    /// Why NVML could not be used, when it could not.
    pub unavailable: Option<String>,
}

impl GpuInventory {
    /// Asks NVML. Without a driver this is an empty inventory that says why.
    pub fn probe() -> Self {
        match probe_nvml() {
            Ok(gpus) => GpuInventory {
                gpus,
                unavailable: None,
            },
            Err(why) => GpuInventory {
                gpus: Vec::new(),
                unavailable: Some(why),
            },
        }
    }

    /// Devices for `actors` actors needing `per_actor` GPUs each (fractions
    /// share a GPU). The GPUs with the most free memory come first.
    pub fn assign(&self, actors: usize, per_actor: f64) -> Result<Vec<Device>, DeviceError> {
        if per_actor <= 0.0 {
            return Ok(vec![Device::Cpu; actors]);
        }
        let needed = (actors as f64 * per_actor).ceil() as usize;
        if needed > self.gpus.len() {
            return Err(DeviceError::NotEnoughGpus {
                actors,
                per_actor,
                needed,
                found: self.gpus.len(),
                why: self.unavailable.clone(),
            });
        }
        let mut by_free = self.gpus.clone();
        by_free.sort_by(|a, b| b.free.cmp(&a.free).then(a.index.cmp(&b.index)));
        Ok((0..actors)
            .map(|i| {
                let slot = (i as f64 * per_actor).floor() as usize;
                Device::Cuda(by_free[slot.min(by_free.len() - 1)].index)
            })
            .collect())
    }
}

fn probe_nvml() -> Result<Vec<Gpu>, String> {
    let nvml = nvml_wrapper::Nvml::init().map_err(|e| format!("NVML unavailable: {e}"))?;
    let count = nvml.device_count().map_err(|e| e.to_string())?;
    let mut gpus = Vec::new();
    for index in 0..count {
        let d = nvml.device_by_index(index).map_err(|e| e.to_string())?;
        gpus.push(Gpu {
            index,
            name: d.name().unwrap_or_else(|_| "unknown".into()),
            free: d.memory_info().map(|m| m.free).unwrap_or(0),
        });
    }
    Ok(gpus)
}

/// `1 was found`, `0 were found (why NVML found none)`: the end of
/// [`DeviceError::NotEnoughGpus`]'s message, however it is worded.
pub fn gpus_found(found: usize, why: Option<&str>) -> String {
    let verb = if found == 1 { "was" } else { "were" };
    let why = why.map(|w| format!(" ({w})")).unwrap_or_default();
    format!("{found} {verb} found{why}")
}

/// A device request that cannot be met.
#[derive(Clone, Debug, thiserror::Error)]
pub enum DeviceError {
    /// More GPUs asked for than found.
    #[error(
        "{actors} actor(s) with {per_actor} GPU(s) each need {needed} GPU(s), but {}",
        gpus_found(*found, why.as_deref())
    )]
    NotEnoughGpus {
        /// Actors in the pool.
        actors: usize,
        /// GPUs per actor asked for.
        per_actor: f64,
        /// GPUs needed in all.
        needed: usize,
        /// GPUs found.
        found: usize,
        /// Why NVML found none, if it failed.
        why: Option<String>,
    },
    /// A GPU was asked for from a build without CUDA.
    #[error("{asked} was asked for, and this build has no CUDA")]
    NotBuiltWithCuda {
        /// The device asked for.
        asked: String,
    },
    /// `cuda:N` names a GPU that is not there.
    #[error(
        "cuda:{index}: no such GPU ({found} found{})",
        why.as_ref().map(|w| format!("; {w}")).unwrap_or_default()
    )]
    NoSuchGpu {
        /// The index asked for.
        index: u32,
        /// GPUs found.
        found: usize,
        /// Why NVML found none, if it failed.
        why: Option<String>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inv(n: u32) -> GpuInventory {
        GpuInventory {
            gpus: (0..n)
                .map(|i| Gpu {
                    index: i,
                    name: "g".into(),
                    free: u64::from(i) * 10,
                })
                .collect(),
            unavailable: None,
        }
    }

    #[test]
    fn picks_most_free_and_refuses_too_many() {
        assert_eq!(inv(0).assign(2, 0.0).unwrap(), vec![Device::Cpu; 2]);
        assert_eq!(
            inv(3).assign(2, 1.0).unwrap(),
            vec![Device::Cuda(2), Device::Cuda(1)]
        );
        assert_eq!(inv(1).assign(2, 0.5).unwrap(), vec![Device::Cuda(0); 2]);
        let e = inv(1).assign(2, 1.0).unwrap_err().to_string();
        assert_eq!(
            e,
            "2 actor(s) with 1 GPU(s) each need 2 GPU(s), but 1 was found"
        );
    }
}
