//! Lifecycle tests with a scripted runtime over a real directory repository: a model file holds a number,
//! the runtime adds it to its input, and every live runtime is counted, so the tests see which files serve
//! and that replaced instances are really gone (their threads joined).

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ferroserve_runtime::{
    DataType, LoadSpec, ModelSignature, Runtime, RuntimeError, RuntimeLoader, Tensor, TensorSpec,
};

use super::*;
use crate::files::Files;
use crate::repository::Root;
use crate::request::InferInput;

struct Adder {
    signature: ModelSignature,
    add: f32,
    live: Arc<AtomicUsize>,
}

impl Drop for Adder {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Runtime for Adder {
    fn signature(&self) -> &ModelSignature {
        &self.signature
    }
    fn infer(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, RuntimeError> {
        std::thread::sleep(Duration::from_millis(1)); // long enough for reloads to overlap requests
        if inputs[0].to_f32_vec().unwrap_or_default().contains(&-3.0) {
            return Err(RuntimeError::DeviceFault("CUDA error: an illegal memory access was encountered".into()));
        }
        let values: Vec<f32> = inputs[0].to_f32_vec().unwrap_or_default().iter().map(|v| v + self.add).collect();
        Ok(vec![
            Tensor::from_f32(inputs[0].shape().to_vec(), &values)
                .map_err(|e| RuntimeError::Execution(e.to_string()))?,
        ])
    }
}

#[derive(Default)]
struct AdderLoader {
    live: Arc<AtomicUsize>,
    loads: AtomicUsize,
}

impl RuntimeLoader for AdderLoader {
    fn platform(&self) -> &'static str {
        "adder"
    }
    fn default_model_filename(&self) -> &'static str {
        "model.add"
    }
    /// It claims CUDA, so that placement on (listed) GPUs can be tested; it runs on the CPU wherever it is put.
    fn cuda_support(&self) -> Result<(), String> {
        Ok(())
    }
    fn load(&self, spec: &LoadSpec) -> Result<Box<dyn Runtime>, RuntimeError> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        let text = std::fs::read_to_string(&spec.model_path).unwrap_or_default();
        let add = text.trim().parse::<f32>().map_err(|_| RuntimeError::Load {
            path: spec.model_path.clone(),
            reason: format!("`{}` is not a number", text.trim()),
        })?;
        self.live.fetch_add(1, Ordering::SeqCst);
        let spec = TensorSpec { name: "x".into(), datatype: DataType::Fp32, dims: vec![-1] };
        Ok(Box::new(Adder {
            signature: ModelSignature { inputs: vec![spec.clone()], outputs: vec![spec] },
            add,
            live: Arc::clone(&self.live),
        }))
    }
}

struct Fixture {
    root: PathBuf,
    loader: Arc<AdderLoader>,
    manager: Arc<ModelManager>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    // Write beside and rename, as a deployment would, so a poll never reads half a file.
    let temp = path.with_extension("tmp");
    std::fs::write(&temp, text).unwrap();
    std::fs::rename(temp, path).unwrap();
}

fn fixture(tag: &str, control: ModelControlMode) -> Fixture {
    fixture_with(tag, control, EngineOptions::default())
}

fn fixture_with(tag: &str, control: ModelControlMode, options: EngineOptions) -> Fixture {
    let root = std::env::temp_dir().join(format!("ferroserve-lifecycle-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let loader = Arc::new(AdderLoader::default());
    let repository =
        Repository::new(vec![Root::models(Files::open(&root.to_string_lossy(), Default::default()).unwrap())]);
    let options = EngineOptions { retire_timeout: Duration::from_secs(10), ..options };
    let manager =
        Arc::new(ModelManager::new(repository, vec![loader.clone() as Arc<dyn RuntimeLoader>], options, control));
    Fixture { root, loader, manager }
}

fn request(model: &str, version: Option<&str>) -> InferRequest {
    InferRequest {
        model_name: model.into(),
        model_version: version.map(str::to_string),
        id: None,
        parameters: Default::default(),
        inputs: vec![InferInput {
            name: "x".into(),
            tensor: Tensor::from_f32(vec![1], &[1.0]).unwrap(),
            parameters: Default::default(),
        }],
        outputs: vec![],
    }
}

async fn answer(manager: &ModelManager, model: &str) -> Result<f32, InferError> {
    let response = manager.infer(request(model, None)).await?;
    Ok(response.outputs[0].tensor.to_f32_vec().unwrap()[0])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reloads_never_fail_a_request_and_release_the_old_instances() {
    let f = fixture("reload", ModelControlMode::Explicit);
    write(&f.root.join("m/1/model.add"), "10");
    f.manager.start(StartupModels::All).await.unwrap();
    assert!(f.manager.is_ready());
    assert_eq!(answer(&f.manager, "m").await.unwrap(), 11.0);

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (manager, stop) = (Arc::clone(&f.manager), Arc::clone(&stop));
        clients.push(tokio::spawn(async move {
            let mut answered = 0;
            while !stop.load(Ordering::SeqCst) {
                let value = answer(&manager, "m").await.expect("no request may fail during a reload");
                assert!((11.0..=21.0).contains(&value), "{value}");
                answered += 1;
            }
            answered
        }));
    }
    for n in 0..10 {
        write(&f.root.join("m/1/model.add"), &format!("{}", 11 + n));
        f.manager.request_load("m", None).await.unwrap();
        assert!(f.manager.is_ready(), "a reload keeps the model ready");
        assert_eq!(f.loader.live.load(Ordering::SeqCst), 1, "the replaced instance is gone once the load returns");
    }
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        assert!(client.await.unwrap() > 0);
    }
    assert_eq!(answer(&f.manager, "m").await.unwrap(), 21.0);
}

#[tokio::test]
async fn a_version_whose_instances_all_failed_is_not_ready_until_loaded_again() {
    let f = fixture("fault", ModelControlMode::Explicit);
    write(&f.root.join("m/1/model.add"), "1");
    write(&f.root.join("other/1/model.add"), "2");
    f.manager.start(StartupModels::All).await.unwrap();
    let readiness = f.manager.readiness();
    assert!(*readiness.borrow());
    let mut poison = request("m", None);
    poison.inputs[0].tensor = Tensor::from_f32(vec![1], &[-3.0]).unwrap();
    let failed = f.manager.infer(poison).await.unwrap_err();
    assert!(matches!(&failed, InferError::Internal(m) if m.contains("device failure")), "{failed:?}");

    assert!(!f.manager.is_ready());
    // Published before the failed request was answered, with no lifecycle step: gRPC health `Watch` sees it.
    assert!(!*readiness.borrow(), "the readiness watch follows a version that failed while serving");
    assert_eq!(f.manager.model_ready("m", None), Ok(false));
    assert_eq!(f.manager.model_ready("m", Some("1")), Ok(false));
    let refused = answer(&f.manager, "m").await.unwrap_err();
    assert!(matches!(&refused, InferError::NotReady(_)), "{refused:?}");
    let refused = f.manager.infer(request("m", Some("1"))).await.unwrap_err();
    assert!(matches!(&refused, InferError::NotReady(m) if m.contains("illegal memory access")), "{refused:?}");
    let row = f.manager.index(false).await.into_iter().find(|r| r.name == "m").unwrap();
    assert_eq!(row.state, IndexState::Unavailable);
    assert!(row.reason.contains("no working instance left"), "{}", row.reason);
    assert_eq!(answer(&f.manager, "other").await.unwrap(), 3.0, "other models serve on");

    // Loading it again builds the version anew, from the same files.
    f.manager.request_load("m", None).await.unwrap();
    assert!(f.manager.is_ready());
    assert_eq!(answer(&f.manager, "m").await.unwrap(), 2.0);
}

#[tokio::test]
async fn a_device_fault_on_a_gpu_keeps_every_model_off_that_gpu_until_a_restart() {
    let gpus = crate::Gpus::new(vec![0, 1]);
    let f = fixture_with(
        "gpu-fault",
        ModelControlMode::Explicit,
        EngineOptions { gpus: gpus.clone(), ..Default::default() },
    );
    write(&f.root.join("m/1/model.add"), "1");
    write(&f.root.join("m/config.pbtxt"), "instance_group [{ kind: KIND_GPU gpus: [0] }]");
    write(&f.root.join("n/1/model.add"), "2");
    write(&f.root.join("n/config.pbtxt"), "instance_group [{ kind: KIND_GPU gpus: [0] }]");
    write(&f.root.join("o/1/model.add"), "3");
    write(&f.root.join("o/config.pbtxt"), "instance_group [{ kind: KIND_GPU gpus: [1] }]");
    f.manager.start(StartupModels::All).await.unwrap();
    assert!(f.manager.is_ready());
    assert!(f.manager.device_faults().is_empty());

    let mut poison = request("m", None);
    poison.inputs[0].tensor = Tensor::from_f32(vec![1], &[-3.0]).unwrap();
    f.manager.infer(poison).await.unwrap_err();
    assert_eq!(f.manager.device_faults().len(), 1);
    assert_eq!(f.manager.device_faults()[0].0, 0);
    // Building a version on the failed GPU again, this model's or another's, is refused with the reason; the
    // other GPU serves.
    write(&f.root.join("n/1/model.add"), "5");
    for model in ["m", "n"] {
        let refused = f.manager.request_load(model, None).await.unwrap_err();
        assert!(format!("{refused:?}").contains("GPU 0 failed"), "{refused:?}");
    }
    assert_eq!(answer(&f.manager, "o").await.unwrap(), 4.0);
    assert!(!f.manager.is_ready());
}

#[tokio::test]
async fn a_failed_reload_keeps_the_old_version_serving() {
    let f = fixture("failed", ModelControlMode::Explicit);
    write(&f.root.join("m/1/model.add"), "1");
    f.manager.start(StartupModels::All).await.unwrap();
    write(&f.root.join("m/1/model.add"), "not a number");
    let error = f.manager.request_load("m", None).await.unwrap_err();
    assert!(matches!(&error, InferError::InvalidInput(m) if m.contains("not a number")), "{error:?}");
    assert_eq!(answer(&f.manager, "m").await.unwrap(), 2.0);
    assert!(f.manager.is_ready());
    let rows = f.manager.index(false).await;
    assert_eq!(rows[0].state, IndexState::Ready);
    assert!(rows[0].reason.contains("last reload failed"), "{}", rows[0].reason);
    assert_eq!(f.loader.live.load(Ordering::SeqCst), 1);
    // Fixed files load again and clear the failure.
    write(&f.root.join("m/1/model.add"), "5");
    f.manager.request_load("m", None).await.unwrap();
    assert_eq!(answer(&f.manager, "m").await.unwrap(), 6.0);
    assert!(f.manager.index(false).await[0].reason.is_empty());
}

#[tokio::test]
async fn unchanged_versions_are_kept_and_changed_ones_rebuilt() {
    let f = fixture("reuse", ModelControlMode::Explicit);
    write(&f.root.join("m/1/model.add"), "1");
    write(&f.root.join("m/2/model.add"), "2");
    write(&f.root.join("m/config.pbtxt"), "version_policy: { all: {} }");
    f.manager.start(StartupModels::All).await.unwrap();
    assert_eq!(f.loader.loads.load(Ordering::SeqCst), 2);
    f.manager.request_load("m", None).await.unwrap();
    assert_eq!(f.loader.loads.load(Ordering::SeqCst), 2, "nothing changed: nothing rebuilt");
    write(&f.root.join("m/2/model.add"), "3");
    f.manager.request_load("m", None).await.unwrap();
    assert_eq!(f.loader.loads.load(Ordering::SeqCst), 3, "only version 2 rebuilt");
    assert_eq!(f.loader.live.load(Ordering::SeqCst), 2);
    let v2 = f.manager.infer(request("m", Some("2"))).await.unwrap();
    assert_eq!(v2.outputs[0].tensor.to_f32_vec().unwrap(), [4.0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_loads_and_unloads_leave_exactly_one_pool() {
    let f = fixture("storm", ModelControlMode::Explicit);
    write(&f.root.join("m/1/model.add"), "1");
    f.manager.start(StartupModels::Named(vec![])).await.unwrap();
    let mut calls = Vec::new();
    for i in 0..24 {
        let manager = Arc::clone(&f.manager);
        calls.push(tokio::spawn(async move {
            if i % 3 == 2 {
                let _ = manager.request_unload("m").await;
            } else {
                manager.request_load("m", None).await.unwrap();
            }
        }));
    }
    for call in calls {
        call.await.unwrap();
    }
    f.manager.request_load("m", None).await.unwrap();
    assert_eq!(f.loader.live.load(Ordering::SeqCst), 1);
    f.manager.request_unload("m").await.unwrap();
    assert_eq!(f.loader.live.load(Ordering::SeqCst), 0, "an unload returns once the instances are gone");
    assert!(matches!(answer(&f.manager, "m").await, Err(InferError::NotFound(_))));
    assert!(f.manager.is_ready(), "an unloaded model does not hold readiness back");
    assert_eq!(f.manager.index(false).await[0].reason, "unloaded");
}

#[tokio::test]
async fn explicit_mode_loads_only_named_models_and_other_modes_refuse_the_api() {
    let f = fixture("explicit", ModelControlMode::Explicit);
    write(&f.root.join("a/1/model.add"), "1");
    write(&f.root.join("b/1/model.add"), "1");
    f.manager.start(StartupModels::Named(vec!["b".into()])).await.unwrap();
    assert!(matches!(answer(&f.manager, "a").await, Err(InferError::NotFound(_))));
    assert_eq!(answer(&f.manager, "b").await.unwrap(), 2.0);
    assert!(matches!(f.manager.request_load("zzz", None).await, Err(InferError::NotFound(_))));
    assert!(f.manager.entry("zzz").is_err(), "a failed load of an unknown name leaves no entry");
    assert!(!f.manager.lifecycles.lock().contains_key("zzz"), "nor a lifecycle lock");

    let g = fixture("none", ModelControlMode::None);
    write(&g.root.join("a/1/model.add"), "1");
    g.manager.start(StartupModels::All).await.unwrap();
    assert!(matches!(g.manager.request_unload("a").await, Err(InferError::NotReady(m)) if m.contains("explicit")));
    assert_eq!(answer(&g.manager, "a").await.unwrap(), 2.0);
}

#[tokio::test]
async fn an_unreadable_repository_never_reports_ready() {
    let f = fixture("missing", ModelControlMode::None);
    std::fs::remove_dir_all(&f.root).unwrap();
    assert!(f.manager.start(StartupModels::All).await.is_err());
    assert!(!f.manager.is_ready());
    assert!(f.manager.repository_failure().is_some());
    // Once it can be read, a poll clears the failure and loads what is there.
    write(&f.root.join("m/1/model.add"), "1");
    f.manager.poll().await;
    assert!(f.manager.is_ready());
    assert_eq!(answer(&f.manager, "m").await.unwrap(), 2.0);
}

#[tokio::test]
async fn polling_follows_added_changed_and_removed_models() {
    let f = fixture("poll", ModelControlMode::Poll);
    write(&f.root.join("a/1/model.add"), "1");
    f.manager.start(StartupModels::All).await.unwrap();
    let mut readiness = f.manager.readiness();
    assert!(*readiness.borrow_and_update());
    write(&f.root.join("b/1/model.add"), "2");
    f.manager.poll().await;
    assert_eq!(answer(&f.manager, "b").await.unwrap(), 3.0);
    let loads = f.loader.loads.load(Ordering::SeqCst);
    f.manager.poll().await;
    assert_eq!(f.loader.loads.load(Ordering::SeqCst), loads, "an unchanged repository reloads nothing");
    write(&f.root.join("a/1/model.add"), "100");
    f.manager.poll().await;
    assert_eq!(answer(&f.manager, "a").await.unwrap(), 101.0);
    std::fs::remove_dir_all(f.root.join("b")).unwrap();
    f.manager.poll().await;
    assert!(matches!(answer(&f.manager, "b").await, Err(InferError::NotFound(_))));
    assert_eq!(f.loader.live.load(Ordering::SeqCst), 1);
    assert!(f.manager.is_ready());
    f.manager.begin_shutdown();
    assert!(!f.manager.is_ready());
    assert!(!*readiness.borrow_and_update(), "watchers see the shutdown");
}

#[tokio::test]
async fn explicit_mode_checks_the_repository_and_lists_what_it_can_load() {
    let f = fixture("explicit-index", ModelControlMode::Explicit);
    write(&f.root.join("a/1/model.add"), "1");
    write(&f.root.join("b/1/model.add"), "1");
    f.manager.start(StartupModels::Named(vec![])).await.unwrap();
    let rows = f.manager.index(false).await;
    assert_eq!(
        rows.iter().map(|r| (r.name.as_str(), r.state)).collect::<Vec<_>>(),
        [("a", IndexState::NotLoaded), ("b", IndexState::NotLoaded)]
    );
    assert!(f.manager.index(true).await.is_empty());
    f.manager.request_unload("a").await.unwrap(); // never loaded: nothing to do, as in Triton
    f.manager.request_load("a", None).await.unwrap();
    assert_eq!(f.manager.index(true).await.len(), 1);

    let g = fixture("explicit-missing", ModelControlMode::Explicit);
    std::fs::remove_dir_all(&g.root).unwrap();
    assert!(g.manager.start(StartupModels::Named(vec![])).await.is_err(), "an unreadable repository fails start-up");
    assert!(!g.manager.is_ready());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_whose_caller_goes_away_still_finishes() {
    let f = fixture("cancel", ModelControlMode::Explicit);
    write(&f.root.join("m/1/model.add"), "1");
    f.manager.start(StartupModels::Named(vec![])).await.unwrap();
    let _ = tokio::time::timeout(Duration::from_micros(1), f.manager.request_load("m", None)).await;
    for _ in 0..200 {
        if f.manager.model_ready("m", None).unwrap_or(false) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(answer(&f.manager, "m").await.unwrap(), 2.0);
    assert!(f.manager.is_ready());
}

#[tokio::test]
async fn polling_does_not_retry_a_broken_update_until_it_changes() {
    let f = fixture("poll-broken", ModelControlMode::Poll);
    write(&f.root.join("m/1/model.add"), "1");
    f.manager.start(StartupModels::All).await.unwrap();
    write(&f.root.join("m/1/model.add"), "broken");
    f.manager.poll().await;
    let attempts = f.loader.loads.load(Ordering::SeqCst);
    f.manager.poll().await;
    f.manager.poll().await;
    assert_eq!(f.loader.loads.load(Ordering::SeqCst), attempts, "unchanged broken files are not retried");
    assert_eq!(answer(&f.manager, "m").await.unwrap(), 2.0, "the old version keeps serving");
    write(&f.root.join("m/1/model.add"), "7");
    f.manager.poll().await;
    assert_eq!(answer(&f.manager, "m").await.unwrap(), 8.0);
}

#[tokio::test]
async fn a_format_this_build_cannot_load_names_the_missing_feature() {
    let f = fixture("feature", ModelControlMode::None);
    write(&f.root.join("ok/1/model.add"), "1");
    write(&f.root.join("script/1/model.pt"), "not loaded");
    write(&f.root.join("named/config.pbtxt"), "platform: \"pytorch_libtorch\"");
    write(&f.root.join("named/1/model.pt"), "not loaded");
    f.manager.start(StartupModels::All).await.unwrap();
    let reasons: Vec<String> = f.manager.index(false).await.into_iter().map(|r| r.reason).collect();
    assert!(reasons.iter().filter(|r| r.contains("cargo feature `torch`")).count() == 2, "{reasons:?}");
    assert_eq!(answer(&f.manager, "ok").await.unwrap(), 2.0, "the others load");
}

#[tokio::test]
async fn unknown_models_and_versions_are_worded_as_triton_words_them() {
    let f = fixture("wording", ModelControlMode::Explicit);
    write(&f.root.join("m/1/model.add"), "1");
    f.manager.start(StartupModels::All).await.unwrap();
    let error = answer(&f.manager, "nope").await.unwrap_err();
    assert_eq!(error, InferError::NotFound("Request for unknown model: 'nope' is not found".into()));
    let error = f.manager.infer(request("m", Some("9"))).await.unwrap_err();
    assert_eq!(error, InferError::NotFound("Request for unknown model: 'm' version 9 is not found".into()));
    assert!(f.manager.model_ready("m", Some("9")).unwrap_err().to_string().contains("is not found"));
    // Not a number: the client's mistake, as Triton words it.
    for version in ["abc", "-1", "+1", "", "99999999999999999999"] {
        let expected = format!("failed to get model version from specified version string '{version}'");
        let error = f.manager.infer(request("m", Some(version))).await.unwrap_err();
        assert_eq!(error, InferError::invalid(expected.clone()));
        assert_eq!(f.manager.model_ready("m", Some(version)).unwrap_err(), InferError::invalid(expected));
    }
    assert_eq!(
        f.manager.model_ready("nope", None).unwrap_err().to_string(),
        "Request for unknown model: 'nope' is not found"
    );
    // An unloaded model answers as an unknown one and stays in the index, unavailable, with the reason.
    f.manager.request_unload("m").await.unwrap();
    assert_eq!(answer(&f.manager, "m").await.unwrap_err().to_string(), "Request for unknown model: 'm' is not found");
    let rows = f.manager.index(false).await;
    assert_eq!(
        rows.iter().map(|r| (r.name.as_str(), r.state, r.reason.as_str())).collect::<Vec<_>>(),
        [("m", IndexState::Unavailable, "unloaded")]
    );
}

#[tokio::test]
async fn load_failures_start_with_triton_wording() {
    let f = fixture("load-wording", ModelControlMode::Explicit);
    write(&f.root.join("m/1/model.add"), "not a number");
    f.manager.start(StartupModels::Named(vec![])).await.unwrap();
    match f.manager.request_load("zzz", None).await {
        Err(InferError::NotFound(m)) => {
            assert!(m.starts_with("failed to load 'zzz', failed to poll from model repository"), "{m}")
        }
        other => panic!("{other:?}"),
    }
    match f.manager.request_load("m", None).await {
        Err(InferError::InvalidInput(m)) => {
            assert!(m.starts_with("failed to load 'm': ") && m.contains("not a number"), "{m}")
        }
        other => panic!("{other:?}"),
    }
    // A model directory whose version directory is empty, or whose policy names a version that is not there.
    std::fs::create_dir_all(f.root.join("empty/1")).unwrap();
    write(&f.root.join("empty/config.pbtxt"), "backend: \"onnxruntime\"");
    write(&f.root.join("pinned/1/model.add"), "1");
    write(&f.root.join("pinned/config.pbtxt"), "version_policy: { specific: { versions: [3] } }");
    for (model, detail) in [("empty", "no numbered version directory"), ("pinned", "has versions [1]")] {
        match f.manager.request_load(model, None).await {
            Err(InferError::InvalidInput(m)) => assert!(
                m.starts_with(&format!(
                    "failed to load '{model}': at least one version must be available under the version policy"
                )) && m.contains(detail),
                "{m}"
            ),
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn configs_ferroserve_cannot_honour_fail_the_load_with_the_reason() {
    let f = fixture("unsupported", ModelControlMode::Explicit);
    let configs = [
        ("seq", "sequence_batching { max_sequence_idle_microseconds: 5000000 }", "`sequence_batching`"),
        ("ens", "ensemble_scheduling { step [{ model_name: \"m\" model_version: -1 }] }", "`ensemble_scheduling`"),
        ("dec", "model_transaction_policy { decoupled: true }", "`model_transaction_policy { decoupled: true }`"),
    ];
    for (name, config, _) in configs {
        write(&f.root.join(format!("{name}/1/model.add")), "1");
        write(&f.root.join(format!("{name}/config.pbtxt")), config);
    }
    write(&f.root.join("ok/1/model.add"), "1");
    write(&f.root.join("ok/config.pbtxt"), "model_transaction_policy { decoupled: false }");
    f.manager.start(StartupModels::Named(vec![])).await.unwrap();
    f.manager.request_load("ok", None).await.unwrap();
    for (name, _, field) in configs {
        let message = match f.manager.request_load(name, None).await {
            Err(InferError::InvalidInput(m)) => m,
            other => panic!("{name}: {other:?}"),
        };
        assert!(message.starts_with(&format!("failed to load '{name}': ")), "{message}");
        assert!(message.contains(field) && message.contains("not supported by ferroserve"), "{message}");
        let row = f.manager.index(false).await.into_iter().find(|r| r.name == name).unwrap();
        assert_eq!(row.state, IndexState::Unavailable);
        assert!(row.reason.contains(field) && row.reason.contains("not supported by ferroserve"), "{}", row.reason);
        assert!(matches!(answer(&f.manager, name).await, Err(InferError::NotReady(m)) if m.contains(field)));
    }
    assert_eq!(f.loader.loads.load(Ordering::SeqCst), 1, "only `ok` was built");
    assert_eq!(answer(&f.manager, "ok").await.unwrap(), 2.0);
}

fn classified(model: &str, values: &[f32], count: i64) -> InferRequest {
    let mut request = request(model, None);
    request.inputs[0].tensor = Tensor::from_f32(vec![values.len()], values).unwrap();
    let mut parameters = crate::request::Parameters::new();
    parameters.insert("classification".into(), crate::request::Parameter::Int(count));
    request.outputs = vec![crate::request::RequestedOutput { name: "x".into(), parameters }];
    request
}

fn texts(response: &InferResponse) -> (Vec<usize>, Vec<String>) {
    let tensor = &response.outputs[0].tensor;
    assert_eq!(tensor.datatype(), DataType::Bytes);
    let strings = tensor.as_strings().unwrap().iter().map(|s| String::from_utf8(s.to_vec()).unwrap()).collect();
    (tensor.shape().to_vec(), strings)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn classification_uses_the_label_file_and_each_request_gets_its_own_rows_of_a_batch() {
    let f = fixture("classify", ModelControlMode::Explicit);
    write(&f.root.join("whole/1/model.add"), "10");
    write(
        &f.root.join("whole/config.pbtxt"),
        "max_batch_size: 0\noutput [ { name: \"x\" label_filename: \"l.txt\" } ]",
    );
    write(&f.root.join("whole/l.txt"), "zero\none\ntwo\n");
    write(&f.root.join("batched/1/model.add"), "10");
    write(
        &f.root.join("batched/config.pbtxt"),
        "max_batch_size: 8\ndynamic_batching { preferred_batch_size: [3] max_queue_delay_microseconds: 2000000 }\n\
         parameters { key: \"batch_window\" value: { string_value: \"fixed\" } }\n\
         output [ { name: \"x\" label_filename: \"l.txt\" } ]",
    );
    write(&f.root.join("batched/l.txt"), "only\n");
    write(&f.root.join("unlabelled/1/model.add"), "10");
    write(&f.root.join("unlabelled/config.pbtxt"), "output [ { name: \"x\" label_filename: \"nope.txt\" } ]");
    f.manager.start(StartupModels::Named(vec![])).await.unwrap();
    f.manager.request_load("whole", None).await.unwrap();
    f.manager.request_load("batched", None).await.unwrap();

    // A model that does not batch: the whole output is one item; N beyond the classes is clamped.
    let answer = f.manager.infer(classified("whole", &[3.0, 1.0, 2.5], 2)).await.unwrap();
    assert_eq!(texts(&answer), (vec![2], vec!["13.000000:0:zero".into(), "12.500000:2:two".into()]));
    let answer = f.manager.infer(classified("whole", &[3.0, 1.0, 2.5], 10)).await.unwrap();
    assert_eq!(texts(&answer).0, vec![3]);
    assert_eq!(texts(&answer).1[2], "11.000000:1:one");
    let bad = f.manager.infer(classified("whole", &[1.0], 0)).await.unwrap_err();
    assert!(matches!(bad, InferError::InvalidInput(m) if m.contains("positive integer")));

    // Two requests batched together: each classifies its own rows.
    let (one, two) = tokio::join!(
        f.manager.infer(classified("batched", &[5.0], 3)),
        f.manager.infer(classified("batched", &[1.0, 2.0], 3)),
    );
    assert_eq!(texts(&one.unwrap()), (vec![1, 1], vec!["15.000000:0:only".into()]));
    assert_eq!(texts(&two.unwrap()), (vec![2, 1], vec!["11.000000:0:only".into(), "12.000000:0:only".into()]));
    let version = f.manager.version("batched", None).unwrap();
    // Statistics are recorded just after the answers go out.
    for _ in 0..200 {
        if version.stats.snapshot().inference_count == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let stats = version.stats.snapshot();
    assert_eq!((stats.inference_count, stats.execution_count), (3, 1), "the two requests ran as one batch");

    // A label file that is not there fails the load, naming it.
    let message = match f.manager.request_load("unlabelled", None).await {
        Err(InferError::InvalidInput(m)) => m,
        other => panic!("{other:?}"),
    };
    assert!(message.contains("`nope.txt` does not exist"), "{message}");
}
