//! The GPUs the server may place models on, found once at start-up: every CUDA device the driver reports,
//! narrowed by `--gpus`. A machine without a driver simply has none, and every model runs on CPU.

use ferroserve_engine::Gpus;
use ferroserve_gpu::{GpuInfo, GpuSelection, NoGpu};

/// Discovers the devices and applies `--gpus`. An error only where `--gpus` names a device that is not there
/// (the operator asked for it, so the server does not start without it).
pub fn find(selection: &GpuSelection) -> anyhow::Result<Result<Vec<GpuInfo>, NoGpu>> {
    let chosen = ferroserve_gpu::select(ferroserve_gpu::discover(), selection)?;
    match &chosen {
        Ok(gpus) => {
            for gpu in gpus {
                tracing::info!(gpu = %gpu, "GPU available to models");
            }
        }
        Err(why) => tracing::info!(reason = %why, "no GPU: models run on CPU"),
    }
    Ok(chosen)
}

/// What the engine needs of them: their ordinals, or why there are none.
pub fn engine_gpus(found: Result<Vec<GpuInfo>, NoGpu>) -> Gpus {
    match found {
        Ok(gpus) => Gpus::new(gpus.iter().map(|g| g.ordinal).collect()),
        Err(why) => Gpus::none(why.to_string()),
    }
}
