//! Device and compute-dtype selection (`--device`, `--dtype`).
use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Device};

use crate::error::{ModelError, Result};

/// Where to run: `auto` picks CUDA, then Metal, then the CPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceChoice {
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
    Metal,
}

impl FromStr for DeviceChoice {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self> {
        let lower = s.trim().to_ascii_lowercase();
        match lower.as_str() {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "metal" => Ok(Self::Metal),
            "cuda" => Ok(Self::Cuda(0)),
            _ => match lower.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(ordinal)) => Ok(Self::Cuda(ordinal)),
                _ => Err(ModelError::invalid(
                    "device",
                    format!("expected auto, cpu, cuda, cuda:N or metal, got {s:?}"),
                )),
            },
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
            Self::Metal => f.write_str("metal"),
        }
    }
}

impl DeviceChoice {
    /// Opens the device; an explicit GPU that this build or machine lacks is an error, `auto` falls back to the CPU.
    pub fn open(self) -> Result<Device> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(ordinal) => {
                if !candle_core::utils::cuda_is_available() {
                    return Err(ModelError::invalid(
                        "device",
                        format!("cuda:{ordinal} requested but this build has no CUDA support (build with --features cuda)"),
                    ));
                }
                Ok(Device::new_cuda(ordinal)?)
            }
            Self::Metal => {
                if !candle_core::utils::metal_is_available() {
                    return Err(ModelError::invalid(
                        "device",
                        "metal requested but this build has no Metal support (build with --features metal)",
                    ));
                }
                Ok(Device::new_metal(0)?)
            }
            Self::Auto => {
                if candle_core::utils::cuda_is_available() {
                    if let Ok(device) = Device::new_cuda(0) {
                        return Ok(device);
                    }
                }
                if candle_core::utils::metal_is_available() {
                    if let Ok(device) = Device::new_metal(0) {
                        return Ok(device);
                    }
                }
                Ok(Device::Cpu)
            }
        }
    }
}

/// The compute dtype: `auto` is f32 on the CPU and the family's half type on a GPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DTypeChoice {
    #[default]
    Auto,
    F32,
    F16,
    Bf16,
}

impl FromStr for DTypeChoice {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "f32" | "fp32" | "float32" => Ok(Self::F32),
            "f16" | "fp16" | "float16" => Ok(Self::F16),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            _ => Err(ModelError::invalid(
                "dtype",
                format!("expected auto, f32, f16 or bf16, got {s:?}"),
            )),
        }
    }
}

impl fmt::Display for DTypeChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
        })
    }
}

impl DTypeChoice {
    /// Resolves `auto` against the device and the family's preferred half type.
    pub fn resolve(self, device: &Device, gpu_half: DType) -> DType {
        match self {
            Self::Auto if device.is_cpu() => DType::F32,
            Self::Auto => gpu_half,
            Self::F32 => DType::F32,
            Self::F16 => DType::F16,
            Self::Bf16 => DType::BF16,
        }
    }
}

/// A short name for logs and reports: `cpu`, `cuda:0`, `metal`.
pub fn device_name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".to_string(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices_and_dtypes() {
        assert_eq!(
            "cuda:1".parse::<DeviceChoice>().unwrap(),
            DeviceChoice::Cuda(1)
        );
        assert_eq!("CPU".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cpu);
        let err = "tpu".parse::<DeviceChoice>().unwrap_err().to_string();
        assert!(err.contains("device") && err.contains("tpu"), "{err}");
        assert_eq!("bf16".parse::<DTypeChoice>().unwrap(), DTypeChoice::Bf16);
        assert_eq!(
            DTypeChoice::Auto.resolve(&Device::Cpu, DType::F16),
            DType::F32
        );
        assert!("f8".parse::<DTypeChoice>().is_err());
    }
}
