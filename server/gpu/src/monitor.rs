//! How busy each GPU is, from NVML, read when `/metrics` is scraped.

use nvml_wrapper::Nvml;

use crate::GpuInfo;

/// One reading of one device. A figure NVML cannot give (power on some boards) is `None`.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuSample {
    /// The CUDA ordinal.
    pub ordinal: u32,
    /// NVML's UUID of the device.
    pub uuid: String,
    /// Share of the last sample period (1/6 s to 1 s, by board) in which a kernel ran, 0 to 1.
    pub utilization: Option<f64>,
    /// Device memory in use, bytes (by every process, as `nvidia-smi` shows it).
    pub memory_used: Option<u64>,
    /// Device memory in all, bytes.
    pub memory_total: Option<u64>,
    /// Power draw in watts.
    pub power_watts: Option<f64>,
}

/// NVML, opened once for the devices the server uses.
pub struct GpuMonitor {
    nvml: Nvml,
    gpus: Vec<(u32, String)>,
}

impl std::fmt::Debug for GpuMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuMonitor").field("gpus", &self.gpus).finish_non_exhaustive()
    }
}

impl GpuMonitor {
    /// Opens NVML for `gpus`; an error (no `libnvidia-ml.so`, say) means no GPU metrics, with the reason.
    pub fn open(gpus: &[GpuInfo]) -> Result<Self, String> {
        let nvml = Nvml::init().map_err(|e| format!("NVML is not available: {e}"))?;
        Ok(GpuMonitor { nvml, gpus: gpus.iter().map(|g| (g.ordinal, g.uuid.clone())).collect() })
    }

    /// Reads every device now. A device NVML no longer finds is read as all `None`.
    pub fn sample(&self) -> Vec<GpuSample> {
        self.gpus
            .iter()
            .map(|(ordinal, uuid)| {
                let device = self.nvml.device_by_uuid(uuid.as_str()).ok();
                let memory = device.as_ref().and_then(|d| d.memory_info().ok());
                GpuSample {
                    ordinal: *ordinal,
                    uuid: uuid.clone(),
                    utilization: device
                        .as_ref()
                        .and_then(|d| d.utilization_rates().ok())
                        .map(|u| f64::from(u.gpu) / 100.0),
                    memory_used: memory.as_ref().map(|m| m.used),
                    memory_total: memory.as_ref().map(|m| m.total),
                    power_watts: device.as_ref().and_then(|d| d.power_usage().ok()).map(|mw| f64::from(mw) / 1000.0),
                }
            })
            .collect()
    }
}
