//! The same repository checks against every store: in-memory (remote-like, through the cache) and local disk.

mod common;

use std::sync::Arc;

use ferroserve_storage::{Storage, StorageError, StorageOptions};
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

fn options(cache: &std::path::Path) -> StorageOptions {
    StorageOptions { cache_dir: cache.to_path_buf(), ..StorageOptions::default() }
}

#[tokio::test]
async fn in_memory_store_root() {
    let cache = tempfile::tempdir().unwrap();
    let store = Arc::new(InMemory::new());
    let storage = Storage::from_store(store.clone(), "", "memory://test", options(cache.path()));
    assert!(!storage.is_local());
    common::conformance(&storage, async |path, data| {
        store.put(&Path::from(path), data.into()).await.unwrap();
    })
    .await;
    let root = storage.fetch(&storage.list_files("m").await.unwrap()).await.unwrap();
    assert!(root.starts_with(cache.path()), "fetched into the cache: {}", root.display());
    assert_eq!(root.file_name().unwrap().len(), 16, "cache_dir/<16 hex>");
}

#[tokio::test]
async fn in_memory_store_nested_prefix() {
    let cache = tempfile::tempdir().unwrap();
    let store = Arc::new(InMemory::new());
    store.put(&Path::from("repo/nestedx/m/config.pbtxt"), b"sibling prefix".to_vec().into()).await.unwrap();
    store.put(&Path::from("elsewhere/m/config.pbtxt"), b"outside".to_vec().into()).await.unwrap();
    let storage = Storage::from_store(store.clone(), "/repo/nested/", "s3://bucket/repo/nested", options(cache.path()));
    common::conformance(&storage, async |path, data| {
        store.put(&Path::from(format!("repo/nested/{path}")), data.into()).await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn local_directory() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let storage = Storage::open(dir.path().to_str().unwrap(), options(cache.path())).unwrap();
    assert!(storage.is_local());
    let root = dir.path().to_path_buf();
    common::conformance(&storage, async |path, data| {
        let file = root.join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, data).unwrap();
    })
    .await;
    let files = storage.list_files("m").await.unwrap();
    assert_eq!(storage.fetch(&files).await.unwrap(), dir.path(), "local storage returns its own directory");
    assert!(common::walk(cache.path()).is_empty(), "local storage copies nothing");
}

#[tokio::test]
async fn local_directory_via_file_url_with_nested_root() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let nested = dir.path().join("a/b");
    std::fs::create_dir_all(&nested).unwrap();
    std::fs::write(dir.path().join("a/outside.txt"), b"x").unwrap();
    let storage = Storage::open(&format!("file://{}", nested.display()), options(cache.path())).unwrap();
    common::conformance(&storage, async |path, data| {
        let file = nested.join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, data).unwrap();
    })
    .await;
}

#[tokio::test]
async fn missing_local_directory_is_not_found_at_first_listing() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let storage = Storage::open(missing.to_str().unwrap(), options(dir.path())).unwrap();
    let error = storage.list_dirs("").await.unwrap_err();
    assert!(matches!(error, StorageError::NotFound { .. }), "{error}");
    assert!(!error.is_transient());
    // Created later: the next listing sees it.
    std::fs::create_dir_all(missing.join("m/1")).unwrap();
    assert_eq!(storage.list_dirs("").await.unwrap(), ["m"]);
}

#[tokio::test]
async fn local_fetch_checks_sizes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f.bin"), b"1234").unwrap();
    let storage = Storage::open(dir.path().to_str().unwrap(), options(dir.path())).unwrap();
    let mut files = storage.list_files("").await.unwrap();
    files[0].size = 5;
    assert!(matches!(storage.fetch(&files).await, Err(StorageError::Integrity { .. })));
}

#[test]
fn describe_and_debug_hide_credentials() {
    let cache = tempfile::tempdir().unwrap();
    let storage =
        Storage::open("https://user:hunter2@example.com/dir/model.onnx?sig=SECRET", options(cache.path())).unwrap();
    assert_eq!(storage.describe(), "https://example.com/dir/model.onnx");
    let debug = format!("{storage:?}");
    assert!(!debug.contains("hunter2") && !debug.contains("SECRET"), "{debug}");
    let azure = Storage::open("https://acct.blob.core.windows.net/c/p?sv=1&sig=SECRET", options(cache.path())).unwrap();
    assert_eq!(azure.describe(), "https://acct.blob.core.windows.net/c/p");
    assert!(!format!("{azure:?}").contains("SECRET"));
    let error = Storage::open("ftp://me:pw@host/x", options(cache.path())).unwrap_err();
    assert!(!error.to_string().contains("pw@"), "{error}");
    let _: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
}
