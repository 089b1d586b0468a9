//! [`Files`]: the storage under one repository root, seen the same way whether it is a local directory or
//! object storage: list directories, list files with their sizes and change tags, read a small file, and
//! make a set of files local. The repository logic above it never touches `std::fs` or a store directly.

use std::path::{Path, PathBuf};

/// A file under a root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileInfo {
    /// Path relative to the root, `/`-separated.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Changes when the content changes (an ETag, or a modification time).
    pub tag: Option<String>,
}

/// Why storage could not be listed or read.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    /// The location is not one this build can read.
    #[error("unsupported model location `{0}`: give a directory or a file:// URL")]
    InvalidLocation(String),
    /// A local file or directory could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl FilesError {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        false
    }
}

/// The storage under one repository root.
#[derive(Debug, Clone)]
pub enum Files {
    /// A local directory.
    Local(PathBuf),
}

impl Files {
    /// The storage a location names: a local directory or a `file://` URL.
    pub fn open(location: &str) -> Result<Files, FilesError> {
        if let Some(path) = location.strip_prefix("file://") {
            return Ok(Files::Local(PathBuf::from(path)));
        }
        if location.contains("://") {
            return Err(FilesError::InvalidLocation(location.to_string()));
        }
        Ok(Files::Local(PathBuf::from(location)))
    }

    /// A local directory.
    pub fn local(dir: &Path) -> Self {
        Files::Local(dir.to_path_buf())
    }

    /// Where it is, for messages (never with credentials).
    pub fn describe(&self) -> String {
        match self {
            Files::Local(dir) => dir.display().to_string(),
        }
    }

    /// Names of the directories directly under `rel` ("" = the root), sorted; dot-names skipped.
    pub async fn list_dirs(&self, rel: &str) -> Result<Vec<String>, FilesError> {
        match self {
            Files::Local(root) => {
                let dir = join(root, rel);
                blocking(move || {
                    let mut names = Vec::new();
                    for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
                        let entry = entry.map_err(io(&dir))?;
                        let name = entry.file_name().to_string_lossy().into_owned();
                        if entry.path().is_dir() && !name.starts_with('.') {
                            names.push(name);
                        }
                    }
                    names.sort();
                    Ok(names)
                })
                .await
            }
        }
    }

    /// Every file under `rel`, recursively, sorted by path; dot-names skipped.
    pub async fn list_files(&self, rel: &str) -> Result<Vec<FileInfo>, FilesError> {
        match self {
            Files::Local(root) => {
                let (root, rel) = (root.clone(), rel.to_string());
                blocking(move || {
                    let mut out = Vec::new();
                    walk(&root, &rel, &mut out)?;
                    out.sort_by(|a, b| a.path.cmp(&b.path));
                    Ok(out)
                })
                .await
            }
        }
    }

    /// A small file's bytes, or `None` when it does not exist.
    pub async fn read(&self, rel: &str) -> Result<Option<Vec<u8>>, FilesError> {
        match self {
            Files::Local(root) => {
                let path = join(root, rel);
                blocking(move || match std::fs::read(&path) {
                    Ok(bytes) => Ok(Some(bytes)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(FilesError::Io { path, source: e }),
                })
                .await
            }
        }
    }

    /// Makes `files` local; returns the local directory standing for the root.
    pub async fn fetch(&self, _files: &[FileInfo]) -> Result<PathBuf, FilesError> {
        match self {
            Files::Local(root) => Ok(root.clone()),
        }
    }
}

fn join(root: &Path, rel: &str) -> PathBuf {
    if rel.is_empty() { root.to_path_buf() } else { root.join(rel) }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FilesError + '_ {
    move |source| FilesError::Io { path: path.to_path_buf(), source }
}

fn walk(root: &Path, rel: &str, out: &mut Vec<FileInfo>) -> Result<(), FilesError> {
    let dir = join(root, rel);
    for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
        let entry = entry.map_err(io(&dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let child = if rel.is_empty() { name } else { format!("{rel}/{name}") };
        let path = entry.path();
        let meta = std::fs::metadata(&path).map_err(io(&path))?;
        if meta.is_dir() {
            walk(root, &child, out)?;
        } else {
            let tag = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_nanos().to_string());
            out.push(FileInfo { path: child, size: meta.len(), tag });
        }
    }
    Ok(())
}

/// Runs file-system work off the async runtime.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, FilesError> + Send + 'static,
) -> Result<T, FilesError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(e) => Err(FilesError::Io { path: PathBuf::new(), source: std::io::Error::other(e.to_string()) }),
    }
}
