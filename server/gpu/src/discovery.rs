//! Finding the CUDA devices and choosing the ones the server may use.

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::str::FromStr;

use cudarc::driver::result as cu;

/// One CUDA device as the driver reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuInfo {
    /// The CUDA ordinal (what `instance_group { gpus: [..] }` and `--gpus` name).
    pub ordinal: u32,
    /// The product name (`NVIDIA H200`).
    pub name: String,
    /// Device memory in bytes.
    pub total_memory: u64,
    /// `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, as `nvidia-smi -L` and NVML print it: the key NVML is asked by,
    /// since NVML's indices need not follow CUDA's ordinals.
    pub uuid: String,
}

impl fmt::Display for GpuInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cuda:{} {} ({} MiB, {})", self.ordinal, self.name, self.total_memory >> 20, self.uuid)
    }
}

/// Why there is no GPU to use; said in the reason of a model that asks for one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoGpu {
    /// `libcuda.so` is not on this machine (no NVIDIA driver, or a container without the driver mounted).
    #[error("no CUDA driver on this machine (libcuda.so was not found)")]
    NoDriver,
    /// The driver is there but refused to start, or reports no device.
    #[error("the CUDA driver reports no usable device: {0}")]
    Driver(String),
    /// `--gpus none`.
    #[error("GPUs are turned off (--gpus none)")]
    TurnedOff,
}

/// Asks the driver for every device. An error says why there are none; a machine with a driver and devices
/// gives at least one.
pub fn discover() -> Result<Vec<GpuInfo>, NoGpu> {
    // cudarc panics where the library or one of its symbols is missing; neither may stop the server.
    std::panic::catch_unwind(AssertUnwindSafe(discover_devices))
        .unwrap_or_else(|_| Err(NoGpu::Driver("the CUDA driver library lacks a function the server calls".into())))
}

fn discover_devices() -> Result<Vec<GpuInfo>, NoGpu> {
    if !driver_present() {
        return Err(NoGpu::NoDriver);
    }
    let driver_error = |e: cu::DriverError| NoGpu::Driver(describe(&e));
    cu::init().map_err(driver_error)?;
    let count = cu::device::get_count().map_err(driver_error)?;
    if count <= 0 {
        return Err(NoGpu::Driver("0 devices".into()));
    }
    (0..count)
        .map(|ordinal| {
            let device = cu::device::get(ordinal).map_err(driver_error)?;
            Ok(GpuInfo {
                ordinal: ordinal as u32,
                name: cu::device::get_name(device).map_err(driver_error)?,
                total_memory: total_memory(device).map_err(driver_error)? as u64,
                uuid: uuid_text(&cu::device::get_uuid(device).map_err(driver_error)?.bytes),
            })
        })
        .collect()
}

/// Whether the driver's library can be opened (cudarc would panic on the first call without it).
#[allow(unsafe_code)]
fn driver_present() -> bool {
    // SAFETY: opening libcuda runs only its initialisers, which NVIDIA's driver keeps side-effect free; nothing
    // from it is called here. The handle is closed again; cudarc opens its own.
    ["libcuda.so.1", "libcuda.so"].into_iter().any(|name| unsafe { libloading::Library::new(name) }.is_ok())
}

#[allow(unsafe_code)]
fn total_memory(device: cudarc::driver::sys::CUdevice) -> Result<usize, cu::DriverError> {
    // SAFETY: `device` came from `cuDeviceGet` after `cuInit` succeeded.
    unsafe { cu::device::total_mem(device) }
}

/// The driver's name for an error (`CUDA_ERROR_NO_DEVICE`), or its number where it has none.
fn describe(error: &cu::DriverError) -> String {
    error.error_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|_| format!("{error:?}"))
}

/// NVML's and `nvidia-smi`'s spelling of a device UUID.
fn uuid_text(bytes: &[std::ffi::c_char; 16]) -> String {
    let hex: Vec<String> = bytes.iter().map(|&b| format!("{:02x}", b as u8)).collect();
    format!(
        "GPU-{}-{}-{}-{}-{}",
        hex[0..4].concat(),
        hex[4..6].concat(),
        hex[6..8].concat(),
        hex[8..10].concat(),
        hex[10..16].concat()
    )
}

/// Which of the devices found the server may use (`--gpus`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum GpuSelection {
    /// Every device the driver reports (the default).
    #[default]
    All,
    /// None: every model runs on CPU, and one that asks for a GPU fails its load.
    None,
    /// These CUDA ordinals only.
    Only(Vec<u32>),
}

impl FromStr for GpuSelection {
    type Err = String;

    /// `all` (or nothing: an empty `FERROSERVE_GPUS=`), `none`, or ordinals separated by commas (`0,2`).
    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim() {
            "" | "all" => Ok(GpuSelection::All),
            "none" => Ok(GpuSelection::None),
            list => {
                let mut ordinals = Vec::new();
                for part in list.split(',') {
                    let ordinal: u32 = part.trim().parse().map_err(|_| {
                        format!("`{text}` is not `all`, `none` or a list of GPU ordinals such as `0,1`")
                    })?;
                    if !ordinals.contains(&ordinal) {
                        ordinals.push(ordinal);
                    }
                }
                Ok(GpuSelection::Only(ordinals))
            }
        }
    }
}

/// `--gpus` named a device that is not there: the server does not start, since the operator asked for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--gpus names GPU {ordinal}, but {found}")]
pub struct SelectionError {
    /// The ordinal asked for.
    pub ordinal: u32,
    /// What there is instead.
    pub found: String,
}

/// The devices the server may use: those found, narrowed by `selection`. An error where `selection` names
/// a device that is not there; an empty list (with the reason) where there are none to use.
pub fn select(
    found: Result<Vec<GpuInfo>, NoGpu>,
    selection: &GpuSelection,
) -> Result<Result<Vec<GpuInfo>, NoGpu>, SelectionError> {
    match selection {
        GpuSelection::None => Ok(Err(NoGpu::TurnedOff)),
        GpuSelection::All => Ok(found),
        GpuSelection::Only(wanted) => {
            let available = match &found {
                Ok(gpus) => gpus.as_slice(),
                Err(_) => &[],
            };
            let mut chosen = Vec::with_capacity(wanted.len());
            for &ordinal in wanted {
                match available.iter().find(|g| g.ordinal == ordinal) {
                    Some(gpu) => chosen.push(gpu.clone()),
                    None => {
                        let found = match &found {
                            Ok(gpus) if gpus.is_empty() => "the driver reports no device".to_string(),
                            Ok(gpus) => format!("the driver reports {} (ordinals 0 to {})", gpus.len(), gpus.len() - 1),
                            Err(why) => why.to_string(),
                        };
                        return Err(SelectionError { ordinal, found });
                    }
                }
            }
            if chosen.is_empty() { Ok(Err(NoGpu::TurnedOff)) } else { Ok(Ok(chosen)) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(ordinal: u32) -> GpuInfo {
        GpuInfo { ordinal, name: "test".into(), total_memory: 1 << 30, uuid: format!("GPU-{ordinal}") }
    }

    #[test]
    fn selections_parse() {
        assert_eq!("all".parse(), Ok(GpuSelection::All));
        assert_eq!(" none ".parse(), Ok(GpuSelection::None));
        assert_eq!("0, 2,0".parse(), Ok(GpuSelection::Only(vec![0, 2])));
        assert!("0;1".parse::<GpuSelection>().is_err());
        assert!("-1".parse::<GpuSelection>().is_err());
        assert_eq!("".parse(), Ok(GpuSelection::All));
        assert!(",".parse::<GpuSelection>().is_err());
    }

    #[test]
    fn selection_narrows_what_was_found_and_refuses_what_was_not() {
        let found = Ok(vec![gpu(0), gpu(1), gpu(2)]);
        assert_eq!(select(found.clone(), &GpuSelection::All), Ok(found.clone()));
        assert_eq!(select(found.clone(), &GpuSelection::Only(vec![2, 0])), Ok(Ok(vec![gpu(2), gpu(0)])));
        assert_eq!(select(found.clone(), &GpuSelection::None), Ok(Err(NoGpu::TurnedOff)));
        let refused = select(found, &GpuSelection::Only(vec![3])).unwrap_err();
        assert_eq!(refused.to_string(), "--gpus names GPU 3, but the driver reports 3 (ordinals 0 to 2)");
        let refused = select(Err(NoGpu::NoDriver), &GpuSelection::Only(vec![0])).unwrap_err();
        assert!(refused.to_string().contains("no CUDA driver"), "{refused}");
        assert_eq!(select(Err(NoGpu::NoDriver), &GpuSelection::All), Ok(Err(NoGpu::NoDriver)));
    }

    #[test]
    fn uuids_are_spelled_as_nvml_spells_them() {
        let bytes: [std::ffi::c_char; 16] = std::array::from_fn(|i| (i as u8 * 17) as std::ffi::c_char);
        assert_eq!(uuid_text(&bytes), "GPU-00112233-4455-6677-8899-aabbccddeeff");
    }

    /// On a machine without a driver (CI), discovery says so instead of panicking; with one, every device
    /// has a name, memory and a UUID.
    #[test]
    fn discovery_never_panics_and_reports_what_it_finds() {
        match discover() {
            Ok(gpus) => {
                assert!(!gpus.is_empty());
                for (i, g) in gpus.iter().enumerate() {
                    assert_eq!(g.ordinal as usize, i);
                    assert!(!g.name.is_empty() && g.total_memory > 0 && g.uuid.starts_with("GPU-"), "{g}");
                }
            }
            Err(why) => assert!(!why.to_string().is_empty()),
        }
    }
}
