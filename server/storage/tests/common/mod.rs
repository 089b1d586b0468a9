//! Test helpers: a store wrapper that counts GETs and injects faults, and a conformance suite.

#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used)]

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use ferroserve_storage::{ObjectInfo, Storage, StorageError};
use futures::stream::{self, BoxStream, StreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
};

/// Wraps a store: counts GETs, fails the next `fail_next` GETs with a transient error, and cuts the body of
/// the next `cut_next` GETs short.
#[derive(Debug)]
pub struct FaultStore {
    pub inner: Arc<dyn ObjectStore>,
    pub gets: AtomicUsize,
    pub ranged_gets: AtomicUsize,
    pub fail_next: AtomicUsize,
    pub cut_next: AtomicUsize,
}

impl FaultStore {
    pub fn new(inner: Arc<dyn ObjectStore>) -> Arc<Self> {
        Arc::new(FaultStore {
            inner,
            gets: AtomicUsize::new(0),
            ranged_gets: AtomicUsize::new(0),
            fail_next: AtomicUsize::new(0),
            cut_next: AtomicUsize::new(0),
        })
    }

    pub fn gets(&self) -> usize {
        self.gets.load(Ordering::SeqCst)
    }
}

fn take_one(counter: &AtomicUsize) -> bool {
    counter.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
}

impl fmt::Display for FaultStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultStore({})", self.inner)
    }
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl ObjectStore for FaultStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        if options.range.is_some() {
            self.ranged_gets.fetch_add(1, Ordering::SeqCst);
        }
        if take_one(&self.fail_next) {
            return Err(object_store::Error::Generic { store: "fault", source: "connection reset by peer".into() });
        }
        let result = self.inner.get_opts(location, options).await?;
        if !take_one(&self.cut_next) {
            return Ok(result);
        }
        let GetResult { meta, range, attributes, extensions, .. } = result;
        let full =
            self.inner.get_opts(location, GetOptions { range: Some(range.clone().into()), ..Default::default() });
        let bytes = full.await?.bytes().await?;
        let half = bytes.slice(..bytes.len() / 2);
        let payload = GetResultPayload::Stream(stream::once(async move { Ok(half) }).boxed());
        Ok(GetResult { payload, meta, range, attributes, extensions })
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> object_store::Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> object_store::Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}

/// The Triton-like layout every implementation must present.
pub const LAYOUT: &[(&str, &[u8])] = &[
    ("m/config.pbtxt", b"name: \"m\"\nmax_batch_size: 4\n"),
    ("m/1/model.onnx", b"model version one"),
    ("m/1/sub/extra.bin", b"\x00\x01\x02"),
    ("m/2/model.onnx", b"model version two, longer"),
    ("other/1/model.onnx", b"other"),
    (".hidden/1/model.onnx", b"hidden"),
];

fn paths(files: &[ObjectInfo]) -> Vec<&str> {
    files.iter().map(|f| f.path.as_str()).collect()
}

/// The conformance suite: `put(path, bytes)` writes one object relative to the storage root.
pub async fn conformance(storage: &Storage, put: impl AsyncFn(&str, &'static [u8])) {
    for (path, data) in LAYOUT {
        put(path, data).await;
    }
    assert_eq!(storage.list_dirs("").await.unwrap(), ["m", "other"], "dot-dirs skipped, sorted");
    assert_eq!(storage.list_dirs("m").await.unwrap(), ["1", "2"]);
    assert_eq!(storage.list_dirs("/m/").await.unwrap(), ["1", "2"], "slashes trimmed");
    assert_eq!(storage.list_dirs("m/1").await.unwrap(), ["sub"]);
    assert!(storage.list_dirs("missing").await.unwrap().is_empty());
    assert!(storage.list_dirs("m/2").await.unwrap().is_empty());

    let files = storage.list_files("m").await.unwrap();
    assert_eq!(paths(&files), ["m/1/model.onnx", "m/1/sub/extra.bin", "m/2/model.onnx", "m/config.pbtxt"]);
    for file in &files {
        let data = LAYOUT.iter().find(|(p, _)| *p == file.path).unwrap().1;
        assert_eq!(file.size, data.len() as u64, "{}", file.path);
        assert!(file.last_modified.is_some());
    }
    assert_eq!(paths(&storage.list_files("m/1").await.unwrap()), ["m/1/model.onnx", "m/1/sub/extra.bin"]);
    assert_eq!(storage.list_files("").await.unwrap().len(), LAYOUT.len(), "list_files does not skip dot-files");
    assert!(storage.list_files("missing").await.unwrap().is_empty());

    assert_eq!(storage.read("m/config.pbtxt").await.unwrap().as_deref(), Some(LAYOUT[0].1));
    assert_eq!(storage.read("m/nope.pbtxt").await.unwrap(), None);
    assert_eq!(storage.read("missing/config.pbtxt").await.unwrap(), None);
    assert!(matches!(storage.read("../etc/passwd").await, Err(StorageError::InvalidPath { .. })));
    assert!(matches!(storage.list_files("m/../other").await, Err(StorageError::InvalidPath { .. })));

    let root = storage.fetch(&files).await.unwrap();
    for file in &files {
        let data = LAYOUT.iter().find(|(p, _)| *p == file.path).unwrap().1;
        assert_eq!(std::fs::read(root.join(&file.path)).unwrap(), data, "{}", file.path);
    }
    // Fetching again is idempotent.
    assert_eq!(storage.fetch(&files).await.unwrap(), root);
    let mut missing = files[0].clone();
    missing.path = "m/3/model.onnx".into();
    assert!(matches!(storage.fetch(&[missing]).await, Err(StorageError::NotFound { .. })));
}

/// Every file under `dir`, recursively, as paths relative to it.
pub fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path.strip_prefix(dir).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}
