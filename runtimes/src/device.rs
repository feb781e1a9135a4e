//! Device discovery and placement: how many CPU cores this process may use (affinity and the
//! cgroup v2 CPU quota), which CUDA devices the machine has, and where a model asks to run.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::Path;

/// Where the cgroup v2 CPU quota lives (`"<quota> <period>"` or `"max <period>"`).
pub const CGROUP_CPU_MAX: &str = "/sys/fs/cgroup/cpu.max";
/// One directory per NVIDIA GPU the kernel driver knows about.
const NVIDIA_GPUS_DIR: &str = "/proc/driver/nvidia/gpus";

/// What the machine offers, discovered once at start-up.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Devices {
    pub cpu: CpuInfo,
    pub cuda: Vec<CudaDevice>,
    /// Whether this binary has the GPU code paths (cargo feature `cuda`).
    pub cuda_compiled: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CpuInfo {
    /// Cores this process may be scheduled on (affinity mask), before any cgroup quota.
    pub logical_cores: usize,
    /// The cgroup v2 CPU quota in cores (`cpu.max`), when one is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup_quota_cores: Option<f64>,
    /// What ferry sizes its threads for: the affinity count capped by the quota (rounded up).
    pub usable_cores: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CudaDevice {
    pub index: usize,
    /// The GPU model as the driver reports it, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl Devices {
    /// Looks at the machine: affinity, `/sys/fs/cgroup/cpu.max`, and the NVIDIA driver's
    /// `/proc/driver/nvidia/gpus`.
    pub fn discover() -> Devices {
        let logical = logical_cores();
        let quota = std::fs::read_to_string(CGROUP_CPU_MAX)
            .ok()
            .and_then(|s| parse_cpu_max(&s));
        Devices {
            cpu: CpuInfo::new(logical, quota),
            cuda: discover_cuda(Path::new(NVIDIA_GPUS_DIR)),
            cuda_compiled: cfg!(feature = "cuda"),
        }
    }

    /// Whether `cuda:index` can run models in this process.
    pub fn cuda_usable(&self, index: usize) -> bool {
        self.cuda_compiled && self.cuda.iter().any(|d| d.index == index)
    }

    /// Decides where a model runs. `Auto` picks the first CUDA device when usable, else the
    /// CPU. A `cuda:N` that is not usable falls back to the CPU (the caller logs a WARN with
    /// the returned reason) unless `strict`, which makes it an error.
    pub fn place(&self, request: DeviceRequest, strict: bool) -> Result<Placement, DeviceError> {
        match request {
            DeviceRequest::Cpu => Ok(Placement::cpu()),
            DeviceRequest::Auto => Ok(match self.cuda.first() {
                Some(d) if self.cuda_usable(d.index) => Placement {
                    device: Device::Cuda(d.index),
                    fallback: None,
                },
                _ => Placement::cpu(),
            }),
            DeviceRequest::Cuda(index) => {
                if self.cuda_usable(index) {
                    return Ok(Placement {
                        device: Device::Cuda(index),
                        fallback: None,
                    });
                }
                let reason = if !self.cuda_compiled {
                    "this binary was built without cargo feature `cuda`".to_string()
                } else if self.cuda.is_empty() {
                    "no CUDA device was found".to_string()
                } else {
                    format!(
                        "the CUDA devices found are {:?}",
                        self.cuda.iter().map(|d| d.index).collect::<Vec<_>>()
                    )
                };
                if strict {
                    Err(DeviceError { index, reason })
                } else {
                    Ok(Placement {
                        device: Device::Cpu,
                        fallback: Some(format!("cuda:{index} is not available: {reason}")),
                    })
                }
            }
        }
    }
}

impl CpuInfo {
    pub fn new(logical_cores: usize, cgroup_quota_cores: Option<f64>) -> CpuInfo {
        let logical = logical_cores.max(1);
        let usable = match cgroup_quota_cores {
            Some(q) if q > 0.0 => (q.ceil() as usize).clamp(1, logical),
            _ => logical,
        };
        CpuInfo {
            logical_cores: logical,
            cgroup_quota_cores,
            usable_cores: usable,
        }
    }
}

fn logical_cores() -> usize {
    // NOTE: std's available_parallelism already applies the cgroup quota on Linux; we want the
    // affinity count and the quota separately, so count /proc/self/status's allowed CPUs first.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .map(|list| count_cpu_list(list.trim()))
        })
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Counts the CPUs in a list such as `0-3,6,8-9`.
fn count_cpu_list(list: &str) -> usize {
    list.split(',')
        .filter(|p| !p.is_empty())
        .map(|part| match part.split_once('-') {
            Some((a, b)) => match (a.trim().parse::<usize>(), b.trim().parse::<usize>()) {
                (Ok(a), Ok(b)) if b >= a => b - a + 1,
                _ => 0,
            },
            None => usize::from(part.trim().parse::<usize>().is_ok()),
        })
        .sum()
}

/// Parses cgroup v2 `cpu.max`: `"max 100000"` (no quota) or `"200000 100000"` (2 cores).
pub fn parse_cpu_max(text: &str) -> Option<f64> {
    let mut parts = text.split_whitespace();
    let quota = parts.next()?;
    let period: f64 = parts.next()?.parse().ok()?;
    if quota == "max" || period <= 0.0 {
        return None;
    }
    let quota: f64 = quota.parse().ok()?;
    (quota > 0.0).then_some(quota / period)
}

fn discover_cuda(dir: &Path) -> Vec<CudaDevice> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut buses: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    buses.sort();
    buses
        .iter()
        .enumerate()
        .map(|(index, bus)| CudaDevice {
            index,
            name: std::fs::read_to_string(bus.join("information"))
                .ok()
                .and_then(|info| {
                    info.lines()
                        .find_map(|l| l.strip_prefix("Model:"))
                        .map(|m| m.trim().to_string())
                }),
        })
        .collect()
}

/// Where a model asks to run (`models[i].device`): `auto`, `cpu` or `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceRequest {
    /// The first CUDA device when this binary and machine have one, else the CPU.
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
}

impl DeviceRequest {
    pub fn parse(text: &str) -> Option<DeviceRequest> {
        match text {
            "auto" => Some(DeviceRequest::Auto),
            "cpu" => Some(DeviceRequest::Cpu),
            "cuda" => Some(DeviceRequest::Cuda(0)),
            _ => text
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceRequest::Cuda),
        }
    }
}

impl fmt::Display for DeviceRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceRequest::Auto => f.write_str("auto"),
            DeviceRequest::Cpu => f.write_str("cpu"),
            DeviceRequest::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl Serialize for DeviceRequest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DeviceRequest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        DeviceRequest::parse(&text).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown device {text:?}; use `auto`, `cpu` or `cuda:N` (N = device index)"
            ))
        })
    }
}

/// A device a model runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    #[default]
    Cpu,
    Cuda(usize),
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// The outcome of [`Devices::place`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub device: Device,
    /// Why the model runs on the CPU although it asked for a GPU.
    pub fallback: Option<String>,
}

impl Placement {
    pub fn cpu() -> Placement {
        Placement {
            device: Device::Cpu,
            fallback: None,
        }
    }
}

/// A model that must run on a CUDA device (`device_strict: true`) that is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the model asks for cuda:{index} with `device_strict: true`, but {reason}; use `device: auto` or `cpu`, or drop `device_strict` to fall back to the CPU"
)]
pub struct DeviceError {
    pub index: usize,
    pub reason: String,
}

/// Splits `usable` cores among `models` loaded models of `instances` compute threads each:
/// the intra-op threads each engine call may use, at least 1.
pub fn intra_op_share(usable: usize, models: usize, instances: usize) -> usize {
    (usable / (models.max(1) * instances.max(1))).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_max_parses_quota_and_no_quota() {
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cpu_max("200000 100000\n"), Some(2.0));
        assert_eq!(parse_cpu_max("50000 100000"), Some(0.5));
        assert_eq!(parse_cpu_max("garbage"), None);
    }

    #[test]
    fn usable_cores_respect_the_quota() {
        assert_eq!(CpuInfo::new(8, Some(2.0)).usable_cores, 2);
        assert_eq!(CpuInfo::new(8, Some(0.5)).usable_cores, 1);
        assert_eq!(CpuInfo::new(2, Some(16.0)).usable_cores, 2);
        assert_eq!(CpuInfo::new(4, None).usable_cores, 4);
    }

    #[test]
    fn cpu_lists_count() {
        assert_eq!(count_cpu_list("0-3,6,8-9"), 7);
        assert_eq!(count_cpu_list("0"), 1);
    }

    #[test]
    fn device_requests_parse() {
        assert_eq!(DeviceRequest::parse("auto"), Some(DeviceRequest::Auto));
        assert_eq!(DeviceRequest::parse("cuda:1"), Some(DeviceRequest::Cuda(1)));
        assert_eq!(DeviceRequest::parse("gpu"), None);
    }

    fn no_gpu() -> Devices {
        Devices {
            cpu: CpuInfo::new(2, None),
            cuda: Vec::new(),
            cuda_compiled: false,
        }
    }

    #[test]
    fn cuda_falls_back_to_cpu_unless_strict() {
        let d = no_gpu();
        let p = d.place(DeviceRequest::Cuda(0), false).unwrap();
        assert_eq!(p.device, Device::Cpu);
        assert!(p.fallback.unwrap().contains("cuda:0 is not available"));
        let e = d.place(DeviceRequest::Cuda(0), true).unwrap_err();
        assert!(e.to_string().contains("device_strict"), "{e}");
        assert_eq!(
            d.place(DeviceRequest::Auto, true).unwrap(),
            Placement::cpu()
        );
    }

    #[test]
    fn thread_share_never_oversubscribes() {
        assert_eq!(intra_op_share(8, 2, 1), 4);
        assert_eq!(intra_op_share(8, 3, 2), 1);
        assert_eq!(intra_op_share(2, 5, 1), 1);
    }
}
