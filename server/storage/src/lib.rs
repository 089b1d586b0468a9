//! ferroserve's model storage: lists a model repository through [`object_store`] and materialises the files a
//! model needs into a local cache directory, because every runtime (ONNX Runtime, TorchScript, candle) loads
//! from a local path.
//!
//! A [`Storage`] is opened from a location string, the same strings KServe's storage initializer accepts:
//!
//! | location | store | `fetch` |
//! | --- | --- | --- |
//! | `/abs/path`, `rel/path`, `file:///abs/path` | `LocalFileSystem` | copies nothing, returns the directory |
//! | `s3://bucket/prefix` | `AmazonS3` (`AWS_*`, plus KServe's `S3_ENDPOINT`, `S3_USE_HTTPS`, `S3_VERIFY_SSL`, `AWS_ANONYMOUS_CREDENTIAL`) | into the cache |
//! | `gs://bucket/prefix` | `GoogleCloudStorage` (`GOOGLE_APPLICATION_CREDENTIALS`, ...) | into the cache |
//! | `az://container/prefix`, `https://<account>.blob.core.windows.net/<container>/<prefix>[?sas]` | `MicrosoftAzure` (`AZURE_STORAGE_*`) | into the cache |
//! | `http(s)://host/path/model.onnx` | `HttpStore`: a tree holding that one file | into the cache |
//! | `http(s)://host/path/model.tar.gz` (`.tgz`, `.tar`, `.zip`) | downloaded once per ETag and unpacked into the cache | copies nothing more |
//!
//! The engine asks three things: which model directories exist ([`Storage::list_dirs`]), what files a model has
//! ([`Storage::list_files`], [`Storage::read`] for `config.pbtxt`), and "make these files local"
//! ([`Storage::fetch`]). The cache is laid out as `cache_dir/<16 hex of the redacted location>/<path>`; each
//! file is downloaded to a temporary name beside its destination and renamed only when complete, and a small
//! manifest entry (size, ETag) lets a warm restart reuse it after a listing, with no GET.
//!
//! Credentials never reach logs, errors or `Debug`: everything shows [`Storage::describe`], the location with
//! URL userinfo and query strings (SAS tokens, presigned signatures) removed. When a location's URLs carry such
//! secrets, every error from its store (whose text, `Debug` and source chain may hold the request URL or a
//! response body echoing it) is rewritten with them removed before it becomes a [`StorageError`]'s source.

mod archive;
mod cache;
mod checksum_gets;
mod digest;
mod error;
mod location;
mod redact;
mod retry;
mod storage;

pub use error::{BoxError, StorageError};
pub use storage::Storage;

use std::path::PathBuf;
use std::time::SystemTime;

/// How [`Storage`] downloads and where it caches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageOptions {
    /// Root of the local cache; each remote location gets its own subdirectory.
    pub cache_dir: PathBuf,
    /// Objects (and parts) downloading at once.
    pub download_concurrency: usize,
    /// Objects larger than this many bytes download as parallel ranged parts of this size.
    pub part_size: u64,
    /// Retries per request after the first attempt, with exponential backoff and jitter (~100 ms doubling to 5 s).
    pub max_retries: u32,
}

impl Default for StorageOptions {
    /// `cache_dir` is `$FERROSERVE_CACHE_DIR`, else `$XDG_CACHE_HOME/ferroserve`, else `$HOME/.cache/ferroserve`,
    /// else `/tmp/ferroserve-cache`; 8 downloads at once, 64 MiB parts, 5 retries.
    fn default() -> Self {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        let cache_dir = var("FERROSERVE_CACHE_DIR")
            .or_else(|| var("XDG_CACHE_HOME").map(|p| p.join("ferroserve")))
            .or_else(|| var("HOME").map(|p| p.join(".cache").join("ferroserve")))
            .unwrap_or_else(|| PathBuf::from("/tmp/ferroserve-cache"));
        StorageOptions { cache_dir, download_concurrency: 8, part_size: 64 * 1024 * 1024, max_retries: 5 }
    }
}

/// One file in a storage, as a listing reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Path relative to the storage root, '/'-separated, no leading '/'.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// The store's entity tag, when it has one; a changed ETag means changed content.
    pub etag: Option<String>,
    /// When the object was last written, when the store says.
    pub last_modified: Option<SystemTime>,
}
