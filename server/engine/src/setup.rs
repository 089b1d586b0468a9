//! Deriving a version's running setup from its config and the model file's signature: which versions the
//! policy selects, the devices of its instances, the completed configuration and the batching policy.
//! Pure functions, kept apart from the manager's bookkeeping.

use ferroserve_runtime::{Device, ModelSignature};

use crate::batcher::state::{BatchPolicy, Window};

/// The config `parameters` key choosing the batching window: `adaptive` (default) or `fixed` (Triton's).
pub(crate) const BATCH_WINDOW_KEY: &str = "batch_window";
use crate::Gpus;
use crate::config::{InstanceGroup, InstanceKind, ModelConfig, TensorConfig, VersionPolicy};
use crate::manager::EngineOptions;
use crate::model::Scheduling;
use crate::repository::ModelSource;
use crate::reshape::Reshapes;

/// The batcher policy and request scheduling of a version: dynamic batching only when the config asks for
/// it (as in Triton), otherwise one request per execution; the queue is bounded either way.
pub(crate) fn batch_policy(config: &ModelConfig, options: &EngineOptions) -> Result<(BatchPolicy, Scheduling), String> {
    let window = match config.parameters.get(BATCH_WINDOW_KEY) {
        None => Window::default(),
        Some(text) => Window::parse(text).ok_or_else(|| {
            format!("parameters `{BATCH_WINDOW_KEY}` is `{text}`; it takes `adaptive` (the default) or `fixed`")
        })?,
    };
    let batching = config.dynamic_batching.as_ref();
    let max_queue_size =
        batching.map(|b| b.max_queue_size as usize).filter(|&n| n > 0).unwrap_or(options.default_queue_capacity);
    let policy = BatchPolicy {
        max_batch_size: batching.map_or(0, |_| config.max_batch_size.unwrap_or(0) as usize),
        preferred_batch_sizes: batching
            .map(|b| b.preferred_batch_size.iter().map(|&p| p as usize).collect())
            .unwrap_or_default(),
        max_delay: std::time::Duration::from_micros(batching.map_or(0, |b| b.max_queue_delay_microseconds)),
        max_queue_size,
        priority_levels: batching.map_or(1, |b| b.priority_levels.max(1) as usize),
        window,
    };
    let scheduling = Scheduling {
        priority_levels: batching.map_or(0, |b| b.priority_levels),
        default_priority_level: batching.map_or(0, |b| b.default_priority_level),
        default_timeout: batching
            .map(|b| b.default_timeout_microseconds)
            .filter(|&us| us > 0)
            .map(std::time::Duration::from_micros),
        allow_timeout_override: batching.is_some_and(|b| b.allow_timeout_override),
    };
    Ok((policy, scheduling))
}

pub(crate) fn select_versions(source: &ModelSource) -> Vec<u64> {
    let found: Vec<u64> = source.versions.iter().map(|v| v.version).collect();
    match &source.config.version_policy {
        VersionPolicy::All => found,
        VersionPolicy::Latest(n) => found.iter().rev().take(*n as usize).rev().copied().collect(),
        VersionPolicy::Specific(list) => found.into_iter().filter(|v| list.contains(v)).collect(),
    }
}

/// The instance groups as they will run: `KIND_AUTO` becomes `KIND_GPU` on every usable GPU (or the ones it
/// lists) where there is one and the runtime can use it, else `KIND_CPU`, as in Triton; a `KIND_GPU` group
/// that cannot be placed is an error naming why, never a silent fall-back to CPU.
pub(crate) fn resolve_groups(
    groups: &[InstanceGroup],
    gpus: &Gpus,
    runtime_cuda: Result<(), String>,
) -> Result<Vec<InstanceGroup>, String> {
    let mut resolved = Vec::with_capacity(groups.len());
    for group in groups {
        let gpu = match group.kind {
            InstanceKind::Cpu if !group.gpus.is_empty() => {
                return Err(format!("an instance_group of kind KIND_CPU lists GPUs {:?}", group.gpus));
            }
            InstanceKind::Cpu => false,
            // An AUTO group that names GPUs asked for them: it is placed (or refused) as a GPU group.
            InstanceKind::Auto => !group.gpus.is_empty() || (gpus.usable().is_ok() && runtime_cuda.is_ok()),
            InstanceKind::Gpu => true,
        };
        if !gpu {
            resolved.push(InstanceGroup { kind: InstanceKind::Cpu, ..group.clone() });
            continue;
        }
        let usable = match (gpus.usable(), &runtime_cuda) {
            (Ok(usable), Ok(())) => usable,
            (Err(no_gpu), Err(no_cuda)) => {
                return Err(format!("an instance_group asks for a GPU, but {no_gpu}; and {no_cuda}"));
            }
            (Err(why), _) => return Err(format!("an instance_group asks for a GPU, but {why}")),
            (_, Err(why)) => return Err(format!("an instance_group asks for a GPU, but {why}")),
        };
        for ordinal in &group.gpus {
            if !usable.contains(ordinal) {
                return Err(format!(
                    "an instance_group asks for GPU {ordinal}, which is not available; usable GPUs: {usable:?}"
                ));
            }
        }
        let ordinals = if group.gpus.is_empty() { usable.to_vec() } else { group.gpus.clone() };
        if let Some((ordinal, why)) = ordinals.iter().find_map(|&g| Some((g, gpus.fault(g)?))) {
            return Err(format!("GPU {ordinal} failed and cannot be used until the server restarts: {why}"));
        }
        resolved.push(InstanceGroup { count: group.count, kind: InstanceKind::Gpu, gpus: ordinals });
    }
    Ok(resolved)
}

/// One device per instance, `count` per GPU of a GPU group, from groups [`resolve_groups`] has placed.
pub(crate) fn instance_devices(groups: &[InstanceGroup]) -> Vec<Device> {
    let mut devices = Vec::new();
    for group in groups {
        let targets: Vec<Device> = match group.kind {
            InstanceKind::Gpu => group.gpus.iter().map(|&g| Device::Cuda(g)).collect(),
            InstanceKind::Cpu | InstanceKind::Auto => vec![Device::Cpu],
        };
        for device in targets {
            devices.extend(std::iter::repeat_n(device, group.count as usize));
        }
    }
    devices
}

/// Fills in what the config leaves out from the model's signature, and checks what it states.
pub(crate) fn complete_config(
    source: &ModelSource,
    platform: &str,
    mut signature: ModelSignature,
    groups: Vec<InstanceGroup>,
    options: &EngineOptions,
) -> Result<(ModelSignature, ModelConfig, Reshapes), String> {
    let config = &source.config;
    let batchable = signature.inputs.iter().chain(&signature.outputs).all(|s| s.dims.first() == Some(&-1));
    let max_batch_size = match config.max_batch_size {
        Some(0) => 0,
        Some(n) if batchable => n,
        Some(n) => {
            return Err(format!(
                "max_batch_size {n} needs every input and output to have a variable first (batch) dim"
            ));
        }
        None if batchable => options.default_max_batch_size,
        None => 0,
    };
    let skip = usize::from(max_batch_size > 0);
    let mut reshapes = Reshapes {
        inputs: vec![None; signature.inputs.len()],
        outputs: vec![None; signature.outputs.len()],
        batched: max_batch_size > 0,
    };
    for (declared, specs, found, kind) in [
        (&config.inputs, &mut signature.inputs, &mut reshapes.inputs, "input"),
        (&config.outputs, &mut signature.outputs, &mut reshapes.outputs, "output"),
    ] {
        let is_input = kind == "input";
        for d in declared.iter() {
            let index = specs
                .iter()
                .position(|s| s.name == d.name)
                .ok_or_else(|| format!("config declares {kind} `{}`, which the model does not have", d.name))?;
            let spec = &mut specs[index];
            if let Some(t) = d.datatype
                && t != spec.datatype
            {
                return Err(format!(
                    "config gives {kind} `{}` type {}, the model has {}",
                    d.name,
                    t.config_name(),
                    spec.datatype.config_name()
                ));
            }
            if let Some(reshape) = &d.reshape {
                let model_dims = &spec.dims[skip..];
                let target = reshape_target(reshape, model_dims).ok_or_else(|| {
                    format!("config reshapes {kind} `{}` to {:?}, the model has {:?}", d.name, reshape, model_dims)
                })?;
                let known = |dims: &[i64]| dims.iter().all(|&x| x >= 0).then(|| dims.iter().product::<i64>());
                if let (Some(a), Some(b)) = (known(&d.dims), known(&target))
                    && a != b
                {
                    return Err(format!(
                        "config gives {kind} `{}` dims {:?} ({a} elements) and reshape {:?} ({b} elements)",
                        d.name, d.dims, target
                    ));
                }
                // Requests resolve the model's dims of an input, replies the client's dims of an output.
                let resolved = if is_input { target } else { d.dims.clone() };
                if resolved.iter().filter(|&&x| x < 0).count() > 1 {
                    return Err(format!(
                        "{kind} `{}`: with a reshape, at most one dim of {:?} may be variable (-1)",
                        d.name, resolved
                    ));
                }
                spec.dims.truncate(skip);
                spec.dims.extend_from_slice(&d.dims);
                found[index] = Some(resolved);
            } else if !d.dims.is_empty() {
                let model_dims = &mut spec.dims[skip..];
                let compatible = model_dims.len() == d.dims.len()
                    && model_dims.iter().zip(&d.dims).all(|(&m, &c)| m == -1 || c == -1 || m == c);
                if !compatible {
                    return Err(format!(
                        "config gives {kind} `{}` dims {:?}, the model has {:?}",
                        d.name, d.dims, model_dims
                    ));
                }
                for (m, &c) in model_dims.iter_mut().zip(&d.dims) {
                    if *m == -1 {
                        *m = c;
                    }
                }
            }
        }
    }
    let describe = |specs: &[ferroserve_runtime::TensorSpec], declared: &[TensorConfig]| -> Vec<TensorConfig> {
        specs
            .iter()
            .map(|s| TensorConfig {
                name: s.name.clone(),
                datatype: Some(s.datatype),
                dims: s.dims[skip..].to_vec(),
                reshape: declared.iter().find(|d| d.name == s.name).and_then(|d| d.reshape.clone()),
                label_filename: declared.iter().find(|d| d.name == s.name).and_then(|d| d.label_filename.clone()),
            })
            .collect()
    };
    let completed = ModelConfig {
        name: Some(source.name.clone()),
        platform: Some(platform.to_string()),
        backend: Some(platform.split('_').next().unwrap_or(platform).to_string()),
        max_batch_size: Some(max_batch_size),
        inputs: describe(&signature.inputs, &config.inputs),
        outputs: describe(&signature.outputs, &config.outputs),
        version_policy: config.version_policy.clone(),
        instance_groups: groups,
        dynamic_batching: config.dynamic_batching.clone(),
        default_model_filename: config.default_model_filename.clone(),
        parameters: config.parameters.clone(),
        gpu_accelerators: config.gpu_accelerators.clone(),
        source: config.source.clone(),
    };
    Ok((signature, completed, reshapes))
}

/// The model-side dims of a `reshape`: its dims, with variable ones taken from the model where it fixes them.
/// `None` when the reshape does not fit the model's dims.
fn reshape_target(reshape: &[i64], model_dims: &[i64]) -> Option<Vec<i64>> {
    if reshape.len() != model_dims.len() {
        return None;
    }
    reshape
        .iter()
        .zip(model_dims)
        .map(|(&r, &m)| match (r, m) {
            (-1, m) => Some(m),
            (r, -1) => Some(r),
            (r, m) if r == m => Some(r),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use ferroserve_runtime::{DataType, TensorSpec};

    use super::*;
    use crate::config::DynamicBatching;

    fn source(config: ModelConfig, versions: &[u64]) -> ModelSource {
        ModelSource::for_tests("m", config, versions)
    }

    fn signature(first: i64) -> ModelSignature {
        ModelSignature {
            inputs: vec![TensorSpec { name: "x".into(), datatype: DataType::Fp32, dims: vec![first, -1] }],
            outputs: vec![TensorSpec { name: "y".into(), datatype: DataType::Fp32, dims: vec![first, 4] }],
        }
    }

    #[test]
    fn version_policies() {
        let with = |p| source(ModelConfig { version_policy: p, ..Default::default() }, &[1, 3, 5]);
        assert_eq!(select_versions(&with(VersionPolicy::Latest(2))), vec![3, 5]);
        assert_eq!(select_versions(&with(VersionPolicy::Latest(1))), vec![5]);
        assert_eq!(select_versions(&with(VersionPolicy::All)), vec![1, 3, 5]);
        assert_eq!(select_versions(&with(VersionPolicy::Specific(vec![1, 5, 9]))), vec![1, 5]);
    }

    #[test]
    fn completes_and_checks_the_config() {
        let options = EngineOptions::default();
        let (sig, config, _) =
            complete_config(&source(ModelConfig::default(), &[1]), "p", signature(-1), vec![], &options).unwrap();
        assert_eq!(config.max_batch_size, Some(options.default_max_batch_size));
        assert_eq!(config.inputs[0].dims, vec![-1]);
        assert_eq!(sig.inputs[0].dims, vec![-1, -1]);

        let not_batching = ModelConfig { max_batch_size: Some(0), ..Default::default() };
        let (_, config, _) =
            complete_config(&source(not_batching, &[1]), "p", signature(-1), vec![], &options).unwrap();
        assert_eq!(config.inputs[0].dims, vec![-1, -1]);

        let fixed_batch = ModelConfig { max_batch_size: Some(8), ..Default::default() };
        assert!(complete_config(&source(fixed_batch, &[1]), "p", signature(2), vec![], &options).is_err());

        let narrowed = ModelConfig {
            max_batch_size: Some(8),
            inputs: vec![TensorConfig {
                name: "x".into(),
                datatype: Some(DataType::Fp32),
                dims: vec![16],
                reshape: None,
                label_filename: None,
            }],
            ..Default::default()
        };
        let (sig, _, _) = complete_config(&source(narrowed, &[1]), "p", signature(-1), vec![], &options).unwrap();
        assert_eq!(sig.inputs[0].dims, vec![-1, 16]);

        let wrong_type = ModelConfig {
            inputs: vec![TensorConfig {
                name: "x".into(),
                datatype: Some(DataType::Int8),
                dims: vec![],
                reshape: None,
                label_filename: None,
            }],
            ..Default::default()
        };
        assert!(complete_config(&source(wrong_type, &[1]), "p", signature(-1), vec![], &options).is_err());
        let unknown = ModelConfig {
            outputs: vec![TensorConfig {
                name: "zz".into(),
                datatype: None,
                dims: vec![],
                reshape: None,
                label_filename: None,
            }],
            ..Default::default()
        };
        assert!(complete_config(&source(unknown, &[1]), "p", signature(-1), vec![], &options).is_err());
    }

    #[test]
    fn batching_only_when_configured() {
        let options = EngineOptions::default();
        let plain = ModelConfig { max_batch_size: Some(32), ..Default::default() };
        let (policy, scheduling) = batch_policy(&plain, &options).unwrap();
        assert_eq!((policy.max_batch_size, policy.max_queue_size), (0, options.default_queue_capacity));
        assert!(scheduling.default_timeout.is_none());
        let batching = ModelConfig {
            max_batch_size: Some(32),
            dynamic_batching: Some(DynamicBatching {
                preferred_batch_size: vec![8],
                max_queue_delay_microseconds: 100,
                max_queue_size: 7,
                default_timeout_microseconds: 500,
                allow_timeout_override: false,
                priority_levels: 3,
                default_priority_level: 2,
            }),
            ..Default::default()
        };
        let (policy, scheduling) = batch_policy(&batching, &options).unwrap();
        assert_eq!((policy.max_batch_size, policy.max_queue_size, policy.priority_levels), (32, 7, 3));
        assert_eq!(scheduling.default_timeout, Some(std::time::Duration::from_micros(500)));
    }

    fn group(count: u32, kind: InstanceKind, gpus: &[u32]) -> InstanceGroup {
        InstanceGroup { count, kind, gpus: gpus.to_vec() }
    }

    #[test]
    fn auto_groups_go_to_every_usable_gpu_when_the_runtime_can_use_them_else_to_cpu() {
        let two = Gpus::new(vec![0, 1]);
        let cuda = || Ok(());
        let no_cuda = || Err("built without CUDA".to_string());
        let auto = [group(2, InstanceKind::Auto, &[])];
        let on_gpus = resolve_groups(&auto, &two, cuda()).unwrap();
        assert_eq!(on_gpus, vec![group(2, InstanceKind::Gpu, &[0, 1])]);
        assert_eq!(instance_devices(&on_gpus), [Device::Cuda(0), Device::Cuda(0), Device::Cuda(1), Device::Cuda(1)]);
        // No GPU, or a runtime without CUDA: AUTO is CPU, as in Triton.
        assert_eq!(resolve_groups(&auto, &two, no_cuda()).unwrap(), vec![group(2, InstanceKind::Cpu, &[])]);
        let none = Gpus::none("no CUDA driver on this machine");
        assert_eq!(resolve_groups(&auto, &none, cuda()).unwrap(), vec![group(2, InstanceKind::Cpu, &[])]);
        // AUTO naming GPUs asked for them.
        let named = [group(1, InstanceKind::Auto, &[1])];
        assert_eq!(resolve_groups(&named, &two, cuda()).unwrap(), vec![group(1, InstanceKind::Gpu, &[1])]);
        let refused = resolve_groups(&named, &none, cuda()).unwrap_err();
        assert!(refused.contains("no CUDA driver"), "{refused}");
    }

    #[test]
    fn gpu_groups_that_cannot_be_placed_fail_with_the_reason_never_fall_back_to_cpu() {
        let two = Gpus::new(vec![0, 1]);
        let gpu = [group(1, InstanceKind::Gpu, &[])];
        assert_eq!(resolve_groups(&gpu, &two, Ok(())).unwrap(), vec![group(1, InstanceKind::Gpu, &[0, 1])]);
        let cases = [
            (resolve_groups(&gpu, &Gpus::none("no CUDA driver on this machine"), Ok(())), "no CUDA driver"),
            (resolve_groups(&gpu, &two, Err("built without CUDA (cargo feature `cuda`)".into())), "feature `cuda`"),
            (resolve_groups(&[group(1, InstanceKind::Gpu, &[0, 2])], &two, Ok(())), "GPU 2, which is not available"),
            (resolve_groups(&[group(1, InstanceKind::Cpu, &[0])], &two, Ok(())), "KIND_CPU lists GPUs"),
        ];
        for (result, reason) in cases {
            let error = result.unwrap_err();
            assert!(error.contains(reason), "{error:?} should say {reason:?}");
        }
        two.record_fault(0, "CUDA error: an illegal memory access was encountered");
        let refused = resolve_groups(&gpu, &two, Ok(())).unwrap_err();
        assert!(refused.contains("GPU 0 failed") && refused.contains("illegal memory access"), "{refused}");
        let cpu_and_gpu = [group(2, InstanceKind::Cpu, &[]), group(1, InstanceKind::Gpu, &[1])];
        let placed = resolve_groups(&cpu_and_gpu, &two, Ok(())).unwrap();
        assert_eq!(instance_devices(&placed), [Device::Cpu, Device::Cpu, Device::Cuda(1)]);
    }

    #[test]
    fn reshape_gives_clients_the_config_dims_and_checks_element_counts() {
        let options = EngineOptions::default();
        let tensor = |dims: Vec<i64>, reshape: Vec<i64>| ModelConfig {
            max_batch_size: Some(8),
            inputs: vec![TensorConfig {
                name: "x".into(),
                datatype: None,
                dims,
                reshape: Some(reshape),
                label_filename: None,
            }],
            ..Default::default()
        };
        // The model's x is [batch, -1]: clients send [batch, 2, 3], the model gets [batch, 6].
        let (sig, config, reshapes) =
            complete_config(&source(tensor(vec![2, 3], vec![6]), &[1]), "p", signature(-1), vec![], &options).unwrap();
        assert_eq!(sig.inputs[0].dims, vec![-1, 2, 3]);
        assert_eq!(config.inputs[0].reshape, Some(vec![6]));
        assert_eq!(reshapes.inputs, vec![Some(vec![6])]);
        assert_eq!(reshapes.outputs, vec![None]);
        // A batch-only model input takes `dims: [1]` with an empty reshape only if the ranks agree.
        let err = complete_config(&source(tensor(vec![1], vec![]), &[1]), "p", signature(-1), vec![], &options);
        assert!(err.unwrap_err().contains("reshapes input `x`"));
        // Known element counts must agree.
        let err = complete_config(&source(tensor(vec![5], vec![6]), &[1]), "p", signature(-1), vec![], &options);
        assert!(err.unwrap_err().contains("elements"));
        // Two variable model dims could not be resolved from one element count.
        let two = ModelSignature {
            inputs: vec![TensorSpec { name: "x".into(), datatype: DataType::Fp32, dims: vec![-1, -1, -1] }],
            outputs: vec![],
        };
        let err = complete_config(&source(tensor(vec![-1], vec![-1, -1]), &[1]), "p", two, vec![], &options);
        assert!(err.unwrap_err().contains("at most one"));
    }
}
