//! Cache behaviour through a store that counts GETs and injects faults.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use common::FaultStore;
use ferroserve_storage::{Storage, StorageError, StorageOptions};
use object_store::ObjectStoreExt;
use object_store::memory::InMemory;
use object_store::path::Path;

struct Fixture {
    store: Arc<InMemory>,
    faults: Arc<FaultStore>,
    cache: tempfile::TempDir,
}

impl Fixture {
    async fn new(objects: &[(&str, Vec<u8>)]) -> Self {
        let store = Arc::new(InMemory::new());
        for (path, data) in objects {
            store.put(&Path::from(*path), data.clone().into()).await.unwrap();
        }
        let faults = FaultStore::new(store.clone());
        Fixture { store, faults, cache: tempfile::tempdir().unwrap() }
    }

    fn storage(&self, tweak: impl FnOnce(&mut StorageOptions)) -> Storage {
        let mut options = StorageOptions { cache_dir: self.cache.path().to_path_buf(), ..StorageOptions::default() };
        tweak(&mut options);
        Storage::from_store(self.faults.clone(), "", "s3://bucket", options)
    }

    fn leftovers(&self) -> Vec<String> {
        common::walk(self.cache.path()).into_iter().filter(|p| p.contains(".part-")).collect()
    }
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

#[tokio::test]
async fn warm_fetch_does_no_gets_and_changed_objects_are_downloaded_again() {
    let fx = Fixture::new(&[("m/1/model.onnx", pattern(1000)), ("m/config.pbtxt", b"cfg".to_vec())]).await;
    let storage = fx.storage(|_| {});
    let files = storage.list_files("m").await.unwrap();
    let root = storage.fetch(&files).await.unwrap();
    assert_eq!(fx.faults.gets(), 2);
    assert_eq!(std::fs::read(root.join("m/1/model.onnx")).unwrap(), pattern(1000));

    // A restart: a new Storage over the same cache lists and finds everything current.
    let restarted = fx.storage(|_| {});
    let files = restarted.list_files("m").await.unwrap();
    assert_eq!(restarted.fetch(&files).await.unwrap(), root);
    assert_eq!(fx.faults.gets(), 2, "warm fetch must not GET");

    // The model file changes upstream (new ETag): only it is downloaded again.
    fx.store.put(&Path::from("m/1/model.onnx"), pattern(1200).into()).await.unwrap();
    let files = restarted.list_files("m").await.unwrap();
    restarted.fetch(&files).await.unwrap();
    assert_eq!(fx.faults.gets(), 3);
    assert_eq!(std::fs::read(root.join("m/1/model.onnx")).unwrap(), pattern(1200));

    // A cached file damaged on disk (wrong size) is downloaded again.
    std::fs::write(root.join("m/config.pbtxt"), b"x").unwrap();
    restarted.fetch(&files).await.unwrap();
    assert_eq!(fx.faults.gets(), 4);
    assert_eq!(std::fs::read(root.join("m/config.pbtxt")).unwrap(), b"cfg");
    // The manifest lives outside the tree: runtimes scanning the model directory see only model files.
    assert_eq!(common::walk(&root), ["m/1/model.onnx", "m/config.pbtxt"]);
}

#[tokio::test]
async fn cut_short_body_is_never_visible_and_is_retried() {
    let fx = Fixture::new(&[("m/1/model.onnx", pattern(4096))]).await;
    let files = fx.storage(|_| {}).list_files("").await.unwrap();

    // No retries allowed: the fetch fails, and nothing sits under the final name or as a temp file.
    fx.faults.cut_next.store(1, Ordering::SeqCst);
    let error = fx.storage(|o| o.max_retries = 0).fetch(&files).await.unwrap_err();
    assert!(matches!(error, StorageError::Unreachable { attempts: 1, .. }), "{error}");
    assert!(error.is_transient());
    assert!(error.to_string().contains("s3://bucket") && error.to_string().contains("m/1/model.onnx"), "{error}");
    assert!(
        common::walk(fx.cache.path()).iter().all(|p| !p.ends_with("model.onnx")),
        "{:?}",
        common::walk(fx.cache.path())
    );
    assert!(fx.leftovers().is_empty());

    // With retries the second attempt succeeds.
    fx.faults.cut_next.store(1, Ordering::SeqCst);
    let before = fx.faults.gets();
    let root = fx.storage(|_| {}).fetch(&files).await.unwrap();
    assert_eq!(fx.faults.gets() - before, 2);
    assert_eq!(std::fs::read(root.join("m/1/model.onnx")).unwrap(), pattern(4096));
    assert!(fx.leftovers().is_empty());
}

#[tokio::test]
async fn transient_errors_retry_then_give_up_naming_the_location() {
    let fx = Fixture::new(&[("a.bin", pattern(10))]).await;
    let storage = fx.storage(|o| o.max_retries = 2);
    let files = storage.list_files("").await.unwrap();
    fx.faults.fail_next.store(2, Ordering::SeqCst);
    storage.fetch(&files).await.unwrap();
    assert_eq!(fx.faults.gets(), 3);

    let other = tempfile::tempdir().unwrap();
    let storage = fx.storage(|o| {
        o.max_retries = 2;
        o.cache_dir = other.path().to_path_buf();
    });
    fx.faults.fail_next.store(10, Ordering::SeqCst);
    let error = storage.fetch(&files).await.unwrap_err();
    assert!(matches!(error, StorageError::Unreachable { attempts: 3, .. }), "{error}");
    assert!(error.to_string().contains("3 attempts"), "{error}");
    fx.faults.fail_next.store(0, Ordering::SeqCst);
}

#[tokio::test]
async fn not_found_is_not_retried() {
    let fx = Fixture::new(&[("a.bin", pattern(10))]).await;
    let storage = fx.storage(|_| {});
    let files = storage.list_files("").await.unwrap();
    fx.store.delete(&Path::from("a.bin")).await.unwrap();
    let error = storage.fetch(&files).await.unwrap_err();
    assert!(matches!(error, StorageError::NotFound { .. }), "{error}");
    assert_eq!(fx.faults.gets(), 1);
}

#[tokio::test]
async fn object_changed_after_listing_fails_instead_of_mixing_versions() {
    let fx = Fixture::new(&[("big.bin", pattern(100))]).await;
    let storage = fx.storage(|o| o.part_size = 10);
    let files = storage.list_files("").await.unwrap();
    fx.store.put(&Path::from("big.bin"), pattern(100).into()).await.unwrap();
    let error = storage.fetch(&files).await.unwrap_err();
    assert!(matches!(error, StorageError::Changed { .. }), "{error}");
    assert!(error.is_transient());
    assert!(fx.leftovers().is_empty());
    assert!(!common::walk(fx.cache.path()).iter().any(|p| p.ends_with("big.bin")));
}

#[tokio::test]
async fn small_part_size_downloads_in_ranged_parts() {
    let data = pattern(100_003);
    let fx = Fixture::new(&[("m/1/model.onnx", data.clone()), ("m/config.pbtxt", b"small".to_vec())]).await;
    let storage = fx.storage(|o| {
        o.part_size = 10_000;
        o.download_concurrency = 3;
    });
    let files = storage.list_files("m/1").await.unwrap();
    // One part comes back short; only that part is fetched again.
    fx.faults.cut_next.store(1, Ordering::SeqCst);
    let root = storage.fetch(&files).await.unwrap();
    assert_eq!(std::fs::read(root.join("m/1/model.onnx")).unwrap(), data);
    assert_eq!(fx.faults.ranged_gets.load(Ordering::SeqCst), 11 + 1, "11 parts, one retried");
    assert_eq!(fx.faults.gets(), 11 + 1, "every GET ranged");
    // A file no bigger than part_size is one plain GET.
    storage.fetch(&storage.list_files("m").await.unwrap()).await.unwrap();
    assert_eq!(fx.faults.gets(), 11 + 1 + 1);
    assert_eq!(fx.faults.ranged_gets.load(Ordering::SeqCst), 11 + 1);
    assert!(fx.leftovers().is_empty());
}

#[tokio::test]
async fn empty_files_need_no_get() {
    let fx = Fixture::new(&[("m/1/empty", Vec::new())]).await;
    let storage = fx.storage(|_| {});
    let files = storage.list_files("").await.unwrap();
    let root = storage.fetch(&files).await.unwrap();
    assert_eq!(std::fs::read(root.join("m/1/empty")).unwrap(), b"");
    assert_eq!(fx.faults.gets(), 0);
}

#[tokio::test]
async fn cache_layout_is_keyed_by_location() {
    let fx = Fixture::new(&[("a.bin", pattern(3))]).await;
    let one = fx.storage(|_| {});
    let mut options = StorageOptions { cache_dir: fx.cache.path().to_path_buf(), ..StorageOptions::default() };
    options.max_retries = 1;
    let two = Storage::from_store(fx.faults.clone(), "", "s3://other-bucket", options);
    let files = one.list_files("").await.unwrap();
    let (a, b) = (one.fetch(&files).await.unwrap(), two.fetch(&files).await.unwrap());
    assert_ne!(a, b);
    assert_eq!(a.parent(), Some(fx.cache.path()));
    assert!(a.file_name().unwrap().to_str().unwrap().chars().all(|c| c.is_ascii_hexdigit()));
}
