//! Archives behind a single http(s) URL (`.tar.gz`, `.tgz`, `.tar`, `.zip`), as KServe's storage initializer
//! accepts them: downloaded once per version and unpacked into the cache.
//!
//! The version is the HEAD's ETag, Last-Modified and size: the tree lives in `cache_dir/<key>/<version>/` and is
//! unpacked into a hidden staging directory that is renamed into place when complete, so an existing version
//! directory is always whole and a restart reuses it after one HEAD. Entries that would land outside the
//! destination (absolute paths, `..`: "zip-slip") and links are rejected, not skipped.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path as FsPath, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::cache::{Downloader, Job, cache_root};
use crate::location::{ArchiveKind, cache_key};
use crate::retry::{RetryPolicy, classify};
use crate::{StorageError, StorageOptions};

/// Downloads and unpacks the archive `name` from `store` (unless this version is cached); returns the directory
/// holding the unpacked tree.
pub(crate) async fn materialise(
    store: &Arc<dyn ObjectStore>,
    name: &str,
    kind: ArchiveKind,
    label: &str,
    policy: &RetryPolicy,
    options: &StorageOptions,
) -> Result<PathBuf, StorageError> {
    let object = Path::from(name);
    let meta =
        policy.run(label, name, || async { store.head(&object).await.map_err(|e| classify(label, name, e)) }).await?;
    let version = cache_key(&format!("{:?}|{}|{}", meta.e_tag, meta.last_modified.timestamp_millis(), meta.size));
    let root = cache_root(options, label);
    let dir = root.join(&version);
    if tokio::fs::metadata(&dir).await.is_ok_and(|m| m.is_dir()) {
        tracing::info!(location = label, dir = %dir.display(), "reusing unpacked archive");
        return Ok(dir);
    }
    let nonce = format!("{:016x}", fastrand::u64(..));
    let archive_path = root.join(format!(".archive-{version}-{nonce}"));
    let staging = root.join(format!(".unpack-{version}-{nonce}"));
    let job = Job { object, rel: name.to_string(), size: meta.size, etag: meta.e_tag, dest: archive_path.clone() };
    Downloader::new(store, label, policy, options).download(&job).await?;
    let (owned_label, into) = (label.to_string(), dir.clone());
    // The blocking task unpacks, moves the tree into place and cleans up by itself, since it outlives this future
    // when the load is cancelled (the server stopping): it then stops at its next read of the archive, so no
    // `.archive-*` or `.unpack-*` is left behind.
    let cancelled = CancelOnDrop(Arc::new(AtomicBool::new(false)));
    let flag = cancelled.0.clone();
    tokio::task::spawn_blocking(move || {
        let placed = unpack(kind, &archive_path, &staging, &owned_label, &flag).and_then(|()| place(&staging, &into));
        let _ = std::fs::remove_file(&archive_path);
        if placed.is_err() {
            let _ = std::fs::remove_dir_all(&staging);
        }
        placed
    })
    .await
    .map_err(|e| archive_error(label, "unpacking task failed", Some(Box::new(e))))??;
    tracing::info!(location = label, bytes = meta.size, dir = %dir.display(), "unpacked archive");
    Ok(dir)
}

/// Renames the unpacked `staging` tree to `dir`. Another process that unpacked the same version first wins: its
/// tree is used and ours dropped.
fn place(staging: &FsPath, dir: &FsPath) -> Result<(), StorageError> {
    match std::fs::rename(staging, dir) {
        Ok(()) => Ok(()),
        Err(_) if dir.is_dir() => {
            let _ = std::fs::remove_dir_all(staging);
            Ok(())
        }
        Err(source) => Err(StorageError::Io { path: dir.to_path_buf(), source }),
    }
}

fn archive_error(label: &str, reason: impl Into<String>, source: Option<crate::BoxError>) -> StorageError {
    StorageError::Archive { location: label.to_string(), reason: reason.into(), source }
}

/// Whether an entry path stays inside the destination: relative, no `..`, no root or drive prefix.
fn check_entry(label: &str, path: &FsPath) -> Result<(), StorageError> {
    let safe = path.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if safe && path.components().next().is_some() {
        Ok(())
    } else {
        Err(archive_error(label, format!("entry `{}` escapes the destination", path.display()), None))
    }
}

/// Set when the future awaiting an unpack is dropped.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The archive file, failing every read once `cancelled` is set.
struct Cancellable<'a> {
    file: File,
    cancelled: &'a AtomicBool,
}

impl Read for Cancellable<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.cancelled.load(Ordering::Relaxed) {
            return Err(std::io::Error::other("the load was cancelled"));
        }
        self.file.read(buf)
    }
}

impl Seek for Cancellable<'_> {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        self.file.seek(pos)
    }
}

/// Unpacks `archive` into `dest` (created), stopping with an error at the first read after `cancelled` is set.
pub(crate) fn unpack(
    kind: ArchiveKind,
    archive: &FsPath,
    dest: &FsPath,
    label: &str,
    cancelled: &AtomicBool,
) -> Result<(), StorageError> {
    std::fs::create_dir_all(dest).map_err(|source| StorageError::Io { path: dest.to_path_buf(), source })?;
    let file = File::open(archive).map_err(|source| StorageError::Io { path: archive.to_path_buf(), source })?;
    let file = Cancellable { file, cancelled };
    match kind {
        ArchiveKind::TarGz => unpack_tar(flate2::read::GzDecoder::new(file), dest, label),
        ArchiveKind::Tar => unpack_tar(file, dest, label),
        ArchiveKind::Zip => unpack_zip(file, dest, label),
    }
}

fn unpack_tar<R: Read>(reader: R, dest: &FsPath, label: &str) -> Result<(), StorageError> {
    let bad = |e: std::io::Error| archive_error(label, "invalid tar data", Some(Box::new(e)));
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(false);
    archive.set_overwrite(true);
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let path = entry.path().map_err(bad)?.into_owned();
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() || kind.is_pax_local_extensions() || kind.is_gnu_longname() {
            continue;
        }
        if path.components().all(|c| matches!(c, Component::CurDir)) {
            continue; // "./", the archive's own root
        }
        check_entry(label, &path)?;
        if !(kind.is_file() || kind.is_dir() || kind.is_contiguous()) {
            return Err(archive_error(
                label,
                format!("entry `{}`: links and special files are not supported", path.display()),
                None,
            ));
        }
        if !entry.unpack_in(dest).map_err(bad)? {
            return Err(archive_error(label, format!("entry `{}` escapes the destination", path.display()), None));
        }
    }
    Ok(())
}

fn unpack_zip<R: Read + Seek>(file: R, dest: &FsPath, label: &str) -> Result<(), StorageError> {
    let bad = |e: zip::result::ZipError| archive_error(label, "invalid zip data", Some(Box::new(e)));
    let mut archive = zip::ZipArchive::new(file).map_err(bad)?;
    for index in 0..archive.len() {
        let mut entry = archive.by_index(index).map_err(bad)?;
        let name = entry.name().map_err(bad)?.into_owned();
        check_entry(label, FsPath::new(&name))?;
        let Some(rel) = entry.enclosed_name() else {
            return Err(archive_error(label, format!("entry `{name}` escapes the destination"), None));
        };
        if entry.is_symlink() {
            return Err(archive_error(label, format!("entry `{}`: links are not supported", rel.display()), None));
        }
        let target = dest.join(&rel);
        let io = |source| StorageError::Io { path: target.clone(), source };
        if entry.is_dir() {
            std::fs::create_dir_all(&target).map_err(io)?;
            continue;
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|source| StorageError::Io { path: parent.to_path_buf(), source })?;
        }
        let mut out = File::create(&target).map_err(io)?;
        std::io::copy(&mut entry, &mut out)
            .map_err(|e| archive_error(label, format!("entry `{}`", rel.display()), Some(Box::new(e))))?;
    }
    Ok(())
}

#[cfg(test)]
#[path = "archive_tests.rs"]
mod tests;
