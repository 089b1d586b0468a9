//! [`Storage`]: one repository location, its store, and the operations the engine needs.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use tokio::sync::OnceCell;

use crate::location::{self, ArchiveKind, Env, Location};
use crate::redact::Redactor;
use crate::retry::{Pushback, RetryPolicy, classify};
use crate::{ObjectInfo, StorageError, StorageOptions, archive, cache};

/// A model repository location: list it, read small files, and make files local.
///
/// Cheap to clone (an `Arc`). Its `Debug` shows only [`Storage::describe`].
#[derive(Clone)]
pub struct Storage {
    inner: Arc<Inner>,
}

struct Inner {
    label: String,
    options: StorageOptions,
    source: Source,
    backend: OnceCell<Backend>,
    /// The store's `Retry-After`, noted by its HTTP client.
    pushback: Pushback,
}

/// How to build the backend on first use (the ones that need I/O to exist).
enum Source {
    Ready,
    Local(PathBuf),
    Archive { store: Arc<dyn ObjectStore>, name: String, kind: ArchiveKind },
}

/// What listing and reading go through.
#[derive(Clone)]
pub(crate) enum Backend {
    /// A tree of objects under `prefix` ("" = the store root); `local_root` when the files are on local disk.
    Tree { store: Arc<dyn ObjectStore>, prefix: String, local_root: Option<PathBuf> },
    /// A single object (a plain http(s) URL), presented as a tree holding just `name`.
    Single { store: Arc<dyn ObjectStore>, name: String },
}

impl fmt::Debug for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Storage").field("location", &self.inner.label).finish_non_exhaustive()
    }
}

/// Checks a path relative to the storage root and returns it without leading or trailing '/'.
pub(crate) fn clean_rel(label: &str, rel: &str) -> Result<String, StorageError> {
    let trimmed = rel.trim_matches('/');
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    if trimmed.split('/').any(|s| s.is_empty() || s == "." || s == "..") || trimmed.contains('\\') {
        return Err(StorageError::InvalidPath {
            location: label.to_string(),
            path: rel.to_string(),
            reason: "paths are '/'-separated names, without '.', '..' or empty segments".into(),
        });
    }
    Ok(trimmed.to_string())
}

/// `prefix` joined with `rel` as a store path (both already cleaned); `None` for the store root.
pub(crate) fn join(prefix: &str, rel: &str) -> Option<Path> {
    match (prefix.is_empty(), rel.is_empty()) {
        (true, true) => None,
        (false, true) => Some(Path::from(prefix)),
        (true, false) => Some(Path::from(rel)),
        (false, false) => Some(Path::from(format!("{prefix}/{rel}"))),
    }
}

fn to_info(prefix: &str, meta: ObjectMeta) -> Option<ObjectInfo> {
    let full = meta.location.as_ref();
    let path = if prefix.is_empty() { full } else { full.strip_prefix(prefix)?.strip_prefix('/')? };
    Some(ObjectInfo {
        path: path.to_string(),
        size: meta.size,
        etag: meta.e_tag,
        last_modified: Some(meta.last_modified.into()),
    })
}

impl Storage {
    /// Parses a location and builds the store from the process environment; no I/O yet.
    ///
    /// The same as [`Storage::open_with_env`] with every (UTF-8) variable of the process environment.
    pub fn open(location: &str, options: StorageOptions) -> Result<Storage, StorageError> {
        Storage::open_in(location, options, &Env::from_process())
    }

    /// Parses a location and builds the store from `env` instead of the process environment; no I/O yet.
    ///
    /// `env` holds the variables [`Storage::open`] would read: `AWS_*` plus KServe's `S3_ENDPOINT`,
    /// `S3_USE_HTTPS`, `S3_VERIFY_SSL` and `AWS_ANONYMOUS_CREDENTIAL` for `s3://`; `GOOGLE_*` and
    /// `SERVICE_ACCOUNT` for `gs://`; `AZURE_*` and `IDENTITY_ENDPOINT` for Azure. Variables missing from `env`
    /// are unset even if the process has them (the stores' own credential providers may still read well-known
    /// files, such as the gcloud default credentials). For embedding and tests: Rust 2024 makes
    /// `std::env::set_var` unsafe, and one process can open storages with different settings this way.
    pub fn open_with_env(
        location: &str,
        options: StorageOptions,
        env: &HashMap<String, String>,
    ) -> Result<Storage, StorageError> {
        let env = Env(env.iter().map(|(k, v)| (k.clone(), v.clone())).collect());
        Storage::open_in(location, options, &env)
    }

    fn open_in(location: &str, options: StorageOptions, env: &Env) -> Result<Storage, StorageError> {
        let label = location::redact(location);
        let parsed = location::parse(location)?;
        let redactor = Arc::new(Redactor::for_location(location, env));
        let pushback = Pushback::default();
        let (source, backend) = match parsed {
            Location::Local(path) => (Source::Local(path), None),
            Location::S3 { ref prefix, .. } | Location::Gcs { ref prefix, .. } | Location::Azure { ref prefix, .. } => {
                let store = location::build_store(&parsed, &label, env, &redactor, &pushback)?;
                (Source::Ready, Some(Backend::Tree { store, prefix: prefix.clone(), local_root: None }))
            }
            Location::Http { ref name, archive, .. } => {
                let store = location::build_store(&parsed, &label, env, &redactor, &pushback)?;
                match archive {
                    None => (Source::Ready, Some(Backend::Single { store, name: name.clone() })),
                    Some(kind) => (Source::Archive { store, name: name.clone(), kind }, None),
                }
            }
        };
        let backend = OnceCell::new_with(backend);
        Ok(Storage { inner: Arc::new(Inner { label, options, source, backend, pushback }) })
    }

    /// Wraps any store (tests use `object_store::memory::InMemory`); prefix "" = the store root.
    pub fn from_store(store: Arc<dyn ObjectStore>, prefix: &str, label: &str, options: StorageOptions) -> Storage {
        let prefix = prefix.trim_matches('/').to_string();
        let backend = Backend::Tree { store, prefix, local_root: None };
        let label = location::redact(label);
        Storage {
            inner: Arc::new(Inner {
                label,
                options,
                source: Source::Ready,
                backend: OnceCell::new_with(Some(backend)),
                pushback: Pushback::default(),
            }),
        }
    }

    /// The location for logs and errors, without credentials or query strings (SAS tokens).
    pub fn describe(&self) -> &str {
        &self.inner.label
    }

    /// Whether files are already local (plain path / `file://`): [`Storage::fetch`] then copies nothing.
    pub fn is_local(&self) -> bool {
        matches!(self.inner.source, Source::Local(_))
    }

    /// Whether listing has no side effect: an archive is downloaded and unpacked by its first listing, which a
    /// caller that gives up waiting would cut short (and the next would start again from nothing).
    pub fn lists_without_side_effects(&self) -> bool {
        !matches!(self.inner.source, Source::Archive { .. }) || self.inner.backend.initialized()
    }

    fn policy(&self) -> RetryPolicy {
        RetryPolicy { max_retries: self.inner.options.max_retries, pushback: self.inner.pushback.clone() }
    }

    async fn backend(&self) -> Result<&Backend, StorageError> {
        let label = &self.inner.label;
        self.inner
            .backend
            .get_or_try_init(|| async {
                match &self.inner.source {
                    Source::Ready => unreachable_backend(label),
                    Source::Local(dir) => local_tree(label, dir).await,
                    Source::Archive { store, name, kind } => {
                        let dir = archive::materialise(store, name, *kind, label, &self.policy(), &self.inner.options)
                            .await?;
                        local_tree(label, &dir).await
                    }
                }
            })
            .await
    }

    /// Names of the immediate child "directories" under `rel` ("" = root), sorted; names starting with '.'
    /// are skipped. A missing `rel` lists as empty; a missing local root is [`StorageError::NotFound`].
    pub async fn list_dirs(&self, rel: &str) -> Result<Vec<String>, StorageError> {
        let label = &self.inner.label;
        let rel = clean_rel(label, rel)?;
        let (store, prefix) = match self.backend().await? {
            Backend::Single { .. } => return Ok(Vec::new()),
            Backend::Tree { store, prefix, .. } => (store, prefix),
        };
        let path = join(prefix, &rel);
        let listing = self
            .policy()
            .run(label, &rel, || async {
                store.list_with_delimiter(path.as_ref()).await.map_err(|e| classify(label, &rel, e))
            })
            .await?;
        let mut names: Vec<String> = listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .filter(|name| !name.starts_with('.'))
            .collect();
        names.sort();
        Ok(names)
    }

    /// Every file under `rel`, recursively, sorted by path (paths relative to the storage root).
    pub async fn list_files(&self, rel: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        let label = &self.inner.label;
        let rel = clean_rel(label, rel)?;
        let mut files = match self.backend().await? {
            Backend::Single { store, name } => {
                if !rel.is_empty() && rel != *name {
                    return Ok(Vec::new());
                }
                let path = Path::from(name.as_str());
                let meta = self
                    .policy()
                    .run(label, name, || async { store.head(&path).await.map_err(|e| classify(label, name, e)) })
                    .await?;
                vec![ObjectInfo {
                    path: name.clone(),
                    size: meta.size,
                    etag: meta.e_tag,
                    last_modified: Some(meta.last_modified.into()),
                }]
            }
            Backend::Tree { store, prefix, .. } => {
                let path = join(prefix, &rel);
                let metas: Vec<ObjectMeta> = self
                    .policy()
                    .run(label, &rel, || async {
                        store.list(path.as_ref()).try_collect().await.map_err(|e| classify(label, &rel, e))
                    })
                    .await?;
                metas.into_iter().filter_map(|m| to_info(prefix, m)).collect()
            }
        };
        files.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(files)
    }

    /// A small file's bytes (`config.pbtxt`); `Ok(None)` when it does not exist.
    pub async fn read(&self, rel: &str) -> Result<Option<Bytes>, StorageError> {
        let label = &self.inner.label;
        let rel = clean_rel(label, rel)?;
        let (store, path) = match self.backend().await? {
            Backend::Single { store, name } if rel == *name => (store, Path::from(name.as_str())),
            Backend::Single { .. } => return Ok(None),
            Backend::Tree { store, prefix, .. } => match join(prefix, &rel) {
                Some(path) => (store, path),
                None => return Ok(None),
            },
        };
        let result = self
            .policy()
            .run(label, &rel, || async {
                let get = store.get(&path).await.map_err(|e| classify(label, &rel, e))?;
                get.bytes().await.map_err(|e| classify(label, &rel, e))
            })
            .await;
        match result {
            Ok(bytes) => Ok(Some(bytes)),
            Err(StorageError::NotFound { .. }) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Makes every listed file present and complete locally; returns the local directory that corresponds to
    /// the storage root, so `root.join(&info.path)` is the file. For local storage returns the original
    /// directory and copies nothing (but checks that each file is there with the listed size).
    pub async fn fetch(&self, files: &[ObjectInfo]) -> Result<PathBuf, StorageError> {
        let label = &self.inner.label;
        for file in files {
            clean_rel(label, &file.path)?;
        }
        match self.backend().await? {
            Backend::Tree { local_root: Some(root), .. } => {
                check_local(label, root, files).await?;
                Ok(root.clone())
            }
            Backend::Tree { store, prefix, local_root: None } => {
                cache::fetch(store, prefix, label, &self.policy(), &self.inner.options, files).await
            }
            Backend::Single { store, .. } => {
                cache::fetch(store, "", label, &self.policy(), &self.inner.options, files).await
            }
        }
    }
}

fn unreachable_backend(label: &str) -> Result<Backend, StorageError> {
    // `Source::Ready` storages are built with their backend already set; reaching here is a bug.
    Err(StorageError::InvalidLocation { location: label.to_string(), reason: "storage backend missing".into() })
}

/// A `LocalFileSystem` rooted at `dir`, which must exist and be a directory.
async fn local_tree(label: &str, dir: &FsPath) -> Result<Backend, StorageError> {
    match tokio::fs::metadata(dir).await {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(StorageError::InvalidLocation {
                location: label.to_string(),
                reason: "not a directory".into(),
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(StorageError::NotFound { location: label.to_string(), path: String::new() });
        }
        Err(source) => return Err(StorageError::Io { path: dir.to_path_buf(), source }),
    }
    let store = LocalFileSystem::new_with_prefix(dir)
        .map_err(|source| StorageError::Store { location: label.to_string(), source })?;
    Ok(Backend::Tree { store: Arc::new(store), prefix: String::new(), local_root: Some(dir.to_path_buf()) })
}

async fn check_local(label: &str, root: &FsPath, files: &[ObjectInfo]) -> Result<(), StorageError> {
    for file in files {
        let path = root.join(&file.path);
        match tokio::fs::metadata(&path).await {
            Ok(meta) if meta.is_file() && meta.len() == file.size => {}
            Ok(meta) => {
                return Err(StorageError::Integrity {
                    location: label.to_string(),
                    path: file.path.clone(),
                    reason: format!("local file has {} bytes, listing says {}", meta.len(), file.size),
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StorageError::NotFound { location: label.to_string(), path: file.path.clone() });
            }
            Err(source) => return Err(StorageError::Io { path, source }),
        }
    }
    Ok(())
}
