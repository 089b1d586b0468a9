//! [`Files`]: the storage under one repository root, seen the same way whether it is a local directory or
//! object storage (`ferroserve-storage`, on the `object_store` crate): list directories, list files with
//! their sizes and change tags, read a small file, and make a set of files local (a cache for remote
//! stores; the directory itself for local ones). The repository logic above it never touches `std::fs` or a
//! store directly.

use std::path::PathBuf;

use ferroserve_storage::{ObjectInfo, Storage, StorageError, StorageOptions};

/// A file under a root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileInfo {
    /// Path relative to the root, `/`-separated.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Changes when the content changes (an ETag, or a modification time).
    pub tag: Option<String>,
    /// The listing it came from, handed back to the storage to fetch the file.
    object: ObjectInfo,
}

impl From<ObjectInfo> for FileInfo {
    fn from(object: ObjectInfo) -> Self {
        let modified = object
            .last_modified
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos().to_string());
        FileInfo { path: object.path.clone(), size: object.size, tag: object.etag.clone().or(modified), object }
    }
}

/// Why storage could not be listed or read.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    /// The storage layer failed (its error names the location, never credentials).
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl FilesError {
    /// Whether trying again later may succeed (the store was unreachable or changed under us).
    pub fn is_transient(&self) -> bool {
        match self {
            FilesError::Storage(e) => e.is_transient(),
        }
    }

    /// Whether a download arrived corrupt in every attempt (see `StorageError::is_corrupted`).
    pub fn is_corrupted(&self) -> bool {
        match self {
            FilesError::Storage(e) => e.is_corrupted(),
        }
    }
}

/// The storage under one repository root.
#[derive(Debug, Clone)]
pub struct Files {
    storage: Storage,
}

impl Files {
    /// The storage a location names: a directory, `file://`, `s3://`, `gs://`, `az://`, an Azure blob URL, or
    /// an http(s) URL of a model file or archive. Builds clients from the environment; no I/O yet.
    pub fn open(location: &str, options: StorageOptions) -> Result<Files, FilesError> {
        Ok(Files { storage: Storage::open(location, options)? })
    }

    /// Over an existing storage (tests use object_store's in-memory store).
    pub fn new(storage: Storage) -> Self {
        Files { storage }
    }

    /// Whether listing may be dropped part-way without cost (see `Storage::lists_without_side_effects`).
    pub fn lists_without_side_effects(&self) -> bool {
        self.storage.lists_without_side_effects()
    }

    /// Where it is, for messages (never with credentials).
    pub fn describe(&self) -> String {
        self.storage.describe().to_string()
    }

    /// Names of the directories directly under `rel` ("" = the root), sorted; dot-names skipped.
    pub async fn list_dirs(&self, rel: &str) -> Result<Vec<String>, FilesError> {
        Ok(self.storage.list_dirs(rel).await?)
    }

    /// Every file under `rel`, recursively, sorted by path; names starting with a dot are skipped.
    pub async fn list_files(&self, rel: &str) -> Result<Vec<FileInfo>, FilesError> {
        let listed = self.storage.list_files(rel).await?;
        Ok(listed
            .into_iter()
            .filter(|o| !o.path.split('/').any(|part| part.starts_with('.')))
            .map(FileInfo::from)
            .collect())
    }

    /// A small file's bytes, or `None` when it does not exist.
    pub async fn read(&self, rel: &str) -> Result<Option<Vec<u8>>, FilesError> {
        Ok(self.storage.read(rel).await?.map(|b| b.to_vec()))
    }

    /// Makes `files` local and complete; returns the local directory standing for the root.
    pub async fn fetch(&self, files: &[FileInfo]) -> Result<PathBuf, FilesError> {
        let objects: Vec<ObjectInfo> = files.iter().map(|f| f.object.clone()).collect();
        Ok(self.storage.fetch(&objects).await?)
    }
}
