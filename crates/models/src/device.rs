//! Picking a burn device from a command-line string: `cpu`, `wgpu`, `cuda[:N]`.
use crate::error::{ModelError, Result};
use burn::tensor::Device;

/// The backends a device string can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    Cpu,
    Wgpu,
    Cuda(usize),
}

impl std::str::FromStr for DeviceKind {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| ModelError::Device(s.to_string(), why.to_string());
        match s.split_once(':') {
            None if s == "cpu" => Ok(Self::Cpu),
            None if s == "wgpu" => Ok(Self::Wgpu),
            None if s == "cuda" => Ok(Self::Cuda(0)),
            Some(("cuda", n)) => n
                .parse()
                .map(Self::Cuda)
                .map_err(|_| bad("the index after `cuda:` must be a number")),
            _ => Err(bad("expected cpu, wgpu or cuda[:N]")),
        }
    }
}

impl DeviceKind {
    /// The burn device, if kiln was compiled with that backend's cargo feature.
    #[allow(unreachable_code, deprecated)]
    pub fn device(self) -> Result<Device> {
        let missing = |feature: &str| {
            ModelError::Device(
                format!("{self:?}").to_lowercase(),
                format!("kiln was built without the `{feature}` feature"),
            )
        };
        match self {
            Self::Cpu => {
                #[cfg(feature = "cpu")]
                return Ok(Device::ndarray());
                Err(missing("cpu"))
            }
            Self::Wgpu => {
                #[cfg(feature = "wgpu")]
                return Ok(Device::wgpu(Default::default()));
                Err(missing("wgpu"))
            }
            Self::Cuda(_i) => {
                #[cfg(feature = "cuda")]
                return Ok(Device::cuda(_i));
                Err(missing("cuda"))
            }
        }
    }
}

/// Parses a device string and returns its burn device.
pub fn parse_device(s: &str) -> Result<Device> {
    s.parse::<DeviceKind>()?.device()
}

/// The default CPU device of the compiled-in CPU backend (for tests and examples); burn's default
/// device when kiln is built without the `cpu` feature (e.g. `--features wgpu` only).
pub fn default_device() -> Device {
    #[cfg(feature = "cpu")]
    {
        #[allow(deprecated)]
        Device::ndarray()
    }
    #[cfg(not(feature = "cpu"))]
    {
        Device::default()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn device_strings_parse() {
        assert_eq!("cpu".parse::<DeviceKind>().unwrap(), DeviceKind::Cpu);
        assert_eq!("cuda:1".parse::<DeviceKind>().unwrap(), DeviceKind::Cuda(1));
        assert!("tpu".parse::<DeviceKind>().is_err());
        assert!("cuda:x".parse::<DeviceKind>().is_err());
    }
}
