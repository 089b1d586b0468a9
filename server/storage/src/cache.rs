//! The local cache: downloads remote objects under `cache_dir/<key>/<path>` and reuses them across restarts.
//!
//! Every object lands first in a hidden temporary file beside its destination and is renamed into place only
//! when all its bytes are there, so a file under its final name is always complete. Its size and ETag go to a
//! manifest entry under `cache_dir/<key>.meta/<path>.json` (outside the tree, so runtimes scanning a model
//! directory never see it); a later fetch whose listing matches the entry does no GET. GETs carry the
//! listing's ETag as `If-Match`, so an object replaced mid-download fails as [`StorageError::Changed`]
//! instead of mixing two versions. Large objects download as parallel ranged parts written at their offsets.

use std::io::SeekFrom;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, UNIX_EPOCH};

use futures::{StreamExt, TryStreamExt, stream};
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tokio::sync::Semaphore;

use crate::digest::{self, ObjectDigest};
use crate::location::cache_key;
use crate::retry::{AttemptError, RetryPolicy, classify};
use crate::storage::join;
use crate::{ObjectInfo, StorageError, StorageOptions};

/// Objects above this size log their progress.
const PROGRESS_THRESHOLD: u64 = 64 * 1024 * 1024;
/// At most one progress line per object this often.
const PROGRESS_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// What the manifest remembers about one cached file.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Entry {
    size: u64,
    etag: Option<String>,
    last_modified_ms: Option<u128>,
}

impl Entry {
    fn of(info: &ObjectInfo) -> Self {
        let last_modified_ms =
            info.last_modified.and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map(|d| d.as_millis());
        Entry { size: info.size, etag: info.etag.clone(), last_modified_ms }
    }

    /// Whether a cached file described by `self` is the object the listing describes. With an ETag, size and
    /// ETag decide; without one, size and modification time.
    fn matches(&self, info: &ObjectInfo) -> bool {
        let wanted = Entry::of(info);
        self.size == wanted.size
            && match &wanted.etag {
                Some(etag) => self.etag.as_ref() == Some(etag),
                None => self.etag.is_none() && self.last_modified_ms == wanted.last_modified_ms,
            }
    }
}

fn io(path: &FsPath) -> impl FnOnce(std::io::Error) -> StorageError + '_ {
    move |source| StorageError::Io { path: path.to_path_buf(), source }
}

/// One object to download.
pub(crate) struct Job {
    /// Store path of the object.
    pub(crate) object: Path,
    /// Path relative to the storage root, for errors and logs.
    pub(crate) rel: String,
    /// Expected size.
    pub(crate) size: u64,
    /// ETag to require on every GET, if any.
    pub(crate) etag: Option<String>,
    /// Final local path.
    pub(crate) dest: PathBuf,
}

/// Downloads objects from one store, sharing a limit on requests in flight.
pub(crate) struct Downloader<'a> {
    pub(crate) store: &'a Arc<dyn ObjectStore>,
    pub(crate) label: &'a str,
    pub(crate) options: &'a StorageOptions,
    pub(crate) policy: RetryPolicy,
    pub(crate) permits: Arc<Semaphore>,
}

impl Downloader<'_> {
    pub(crate) fn new<'a>(
        store: &'a Arc<dyn ObjectStore>,
        label: &'a str,
        policy: &RetryPolicy,
        options: &'a StorageOptions,
    ) -> Downloader<'a> {
        let permits = Arc::new(Semaphore::new(options.download_concurrency.max(1)));
        Downloader { store, label, options, policy: policy.clone(), permits }
    }

    /// Downloads `job` to a temporary file beside `job.dest`, checks it against the digest the store states (see
    /// [`crate::digest`]), then renames it into place. A download whose bytes do not match is done again, whole, as
    /// often as `--storage-retries` allows: the bad bytes may be in any part.
    pub(crate) async fn download(&self, job: &Job) -> Result<(), StorageError> {
        let parent = job.dest.parent().unwrap_or(FsPath::new("."));
        tokio::fs::create_dir_all(parent).await.map_err(io(parent))?;
        let file_name = job.dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let (location, path) = (self.label.to_string(), job.rel.clone());
        let mut attempts = 0u32;
        // The digest of the last download that did not match.
        let mut last_mismatch: Option<Vec<u8>> = None;
        loop {
            attempts += 1;
            // Removed when dropped, unless renamed into place: a download given up or cut off (another file
            // failed, the server is stopping) leaves nothing behind.
            let temp =
                TempFile { path: parent.join(format!(".{file_name}.part-{:016x}", fastrand::u64(..))), renamed: false };
            let (stated, mismatch) = match self.download_to(job, &temp.path).await? {
                None => return temp.rename_to(&job.dest).await,
                Some(stated) => match digest::verify(&temp.path, &stated).await {
                    Ok(()) => return temp.rename_to(&job.dest).await,
                    Err(Err(source)) => return Err(StorageError::Io { path: temp.path.clone(), source }),
                    Err(Ok(mismatch)) => (stated, mismatch),
                },
            };
            if !stated.computed_by_store && last_mismatch.as_ref() == Some(&mismatch.got) {
                // The same bytes twice: the uploader's or the convention's digest is what is wrong.
                let header = stated.header;
                tracing::warn!(
                    location = self.label,
                    path = job.rel,
                    header,
                    "two downloads hashed the same, unlike the digest the store states; taking the bytes"
                );
                return temp.rename_to(&job.dest).await;
            }
            // A digest the store did not compute gets a second download even with no retries, to tell.
            if attempts > self.options.max_retries.max(u32::from(!stated.computed_by_store)) {
                let s = if attempts == 1 { "" } else { "s" };
                let reason = format!("{}, {attempts} attempt{s}", mismatch.reason);
                return Err(StorageError::Corrupted { location, path, reason });
            }
            let reason = &mismatch.reason;
            tracing::warn!(
                location = self.label,
                path = job.rel,
                attempts,
                reason,
                "corrupt download, downloading it again"
            );
            last_mismatch = Some(mismatch.got);
            // As after a transient error: a store or proxy that is corrupting answers may be overloaded.
            tokio::time::sleep(self.policy.delay(attempts - 1)).await;
        }
    }

    /// Downloads `job` into `temp`; returns the whole-object digest the store's answers stated, if any.
    async fn download_to(&self, job: &Job, temp: &FsPath) -> Result<Option<ObjectDigest>, StorageError> {
        let file = tokio::fs::File::create(temp).await.map_err(io(temp))?;
        file.set_len(job.size).await.map_err(io(temp))?;
        drop(file);
        let progress = Progress::new(self.label, &job.rel, job.size);
        let part_size = self.options.part_size.max(1);
        let ranges: Vec<(u64, u64)> =
            (0..job.size.div_ceil(part_size)).map(|i| (i * part_size, ((i + 1) * part_size).min(job.size))).collect();
        let whole = ranges.len() <= 1;
        let stated = std::sync::Mutex::new(None);
        let part = Part { job, temp, whole, progress: &progress, stated: &stated };
        stream::iter(ranges)
            .map(|(start, end)| self.download_part(&part, start, end))
            .buffer_unordered(self.options.download_concurrency.max(1))
            .try_collect::<()>()
            .await?;
        let file = tokio::fs::OpenOptions::new().write(true).open(temp).await.map_err(io(temp))?;
        file.sync_all().await.map_err(io(temp))?;
        let written = file.metadata().await.map_err(io(temp))?.len();
        if written != job.size {
            return Err(StorageError::Integrity {
                location: self.label.to_string(),
                path: job.rel.clone(),
                reason: format!("downloaded {written} bytes, listing says {}", job.size),
            });
        }
        progress.finish();
        Ok(stated.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Downloads bytes `start..end` into `temp` at offset `start`, retrying the whole range on transient errors.
    async fn download_part(&self, part: &Part<'_>, start: u64, end: u64) -> Result<(), StorageError> {
        if start == end {
            return Ok(());
        }
        self.policy
            .run(self.label, &part.job.rel, || async {
                let mut added = 0u64;
                let result = self.attempt_part(part, start, end, &mut added).await;
                if result.is_err() {
                    part.progress.sub(added);
                }
                result
            })
            .await
    }

    async fn attempt_part(&self, part: &Part<'_>, start: u64, end: u64, added: &mut u64) -> Result<(), AttemptError> {
        let Part { job, temp, whole, progress, stated } = *part;
        let fatal_io = |source| AttemptError::Fatal(StorageError::Io { path: temp.to_path_buf(), source });
        let _permit = self.permits.acquire().await.map_err(|e| AttemptError::Transient(Box::new(e)))?;
        let options = GetOptions {
            // Weak validators never match If-Match (RFC 9110 strong comparison); skip them.
            if_match: job.etag.clone().filter(|e| !e.starts_with("W/")),
            range: (!whole).then_some(GetRange::Bounded(start..end)),
            ..GetOptions::default()
        };
        let get = self.store.get_opts(&job.object, options).await.map_err(|e| classify(self.label, &job.rel, e))?;
        if let Some(digest) = get.extensions.get::<ObjectDigest>() {
            // Every answer is of the same object (If-Match); the first digest stated is kept.
            stated.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get_or_insert_with(|| digest.clone());
        }
        let mut file = tokio::fs::OpenOptions::new().write(true).open(temp).await.map_err(fatal_io)?;
        file.seek(SeekFrom::Start(start)).await.map_err(fatal_io)?;
        let mut body = get.into_stream();
        let want = end - start;
        let mut got = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| classify(self.label, &job.rel, e))?;
            got += chunk.len() as u64;
            if got > want {
                return Err(AttemptError::Fatal(StorageError::Integrity {
                    location: self.label.to_string(),
                    path: job.rel.clone(),
                    reason: format!("bytes {start}..{end}: store sent more than {want} bytes"),
                }));
            }
            file.write_all(&chunk).await.map_err(fatal_io)?;
            *added += chunk.len() as u64;
            progress.add(chunk.len() as u64);
        }
        file.flush().await.map_err(fatal_io)?;
        if got < want {
            return Err(AttemptError::Transient(
                format!("bytes {start}..{end}: body ended after {got} of {want} bytes").into(),
            ));
        }
        Ok(())
    }
}

/// A temporary download, removed when dropped unless it was renamed into place.
struct TempFile {
    path: PathBuf,
    renamed: bool,
}

impl TempFile {
    async fn rename_to(mut self, dest: &FsPath) -> Result<(), StorageError> {
        tokio::fs::rename(&self.path, dest).await.map_err(io(dest))?;
        self.renamed = true;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.renamed {
            // Blocking, but a single unlink, where a download was given up.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// What every part of one download shares.
#[derive(Clone, Copy)]
struct Part<'a> {
    job: &'a Job,
    temp: &'a FsPath,
    /// One GET for the whole object (no range).
    whole: bool,
    progress: &'a Progress<'a>,
    /// The whole-object digest the first answer to state one stated.
    stated: &'a std::sync::Mutex<Option<ObjectDigest>>,
}

/// Throttled progress lines for one large object.
struct Progress<'a> {
    label: &'a str,
    rel: &'a str,
    total: u64,
    done: AtomicU64,
    started: Instant,
    last_log: std::sync::Mutex<Instant>,
}

impl<'a> Progress<'a> {
    fn new(label: &'a str, rel: &'a str, total: u64) -> Self {
        let now = Instant::now();
        Progress { label, rel, total, done: AtomicU64::new(0), started: now, last_log: std::sync::Mutex::new(now) }
    }

    fn add(&self, bytes: u64) {
        let done = self.done.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if self.total < PROGRESS_THRESHOLD {
            return;
        }
        let now = Instant::now();
        let Ok(mut last) = self.last_log.try_lock() else { return };
        if now.duration_since(*last) >= PROGRESS_INTERVAL {
            *last = now;
            drop(last);
            let secs = self.started.elapsed().as_secs_f64().max(1e-3);
            let mb_per_s = done as f64 / secs / 1e6;
            let (label, path, total) = (self.label, self.rel, self.total);
            tracing::info!(location = label, path, bytes_done = done, bytes_total = total, mb_per_s, "downloading");
        }
    }

    fn sub(&self, bytes: u64) {
        self.done.fetch_sub(bytes, Ordering::Relaxed);
    }

    fn finish(&self) {
        if self.total >= PROGRESS_THRESHOLD {
            let secs = self.started.elapsed().as_secs_f64().max(1e-3);
            let (label, path, total) = (self.label, self.rel, self.total);
            tracing::info!(location = label, path, bytes = total, mb_per_s = total as f64 / secs / 1e6, "downloaded");
        }
    }
}

/// The cache directory for a location: `cache_dir/<16 hex of the redacted location>`.
pub(crate) fn cache_root(options: &StorageOptions, label: &str) -> PathBuf {
    options.cache_dir.join(cache_key(label))
}

fn entry_path(options: &StorageOptions, label: &str, rel: &str) -> PathBuf {
    options.cache_dir.join(format!("{}.meta", cache_key(label))).join(format!("{rel}.json"))
}

async fn read_entry(path: &FsPath) -> Option<Entry> {
    let bytes = tokio::fs::read(path).await.ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Whether the cached copy of `info` is complete and current.
async fn is_cached(options: &StorageOptions, label: &str, root: &FsPath, info: &ObjectInfo) -> bool {
    let Ok(meta) = tokio::fs::metadata(root.join(&info.path)).await else { return false };
    if !meta.is_file() || meta.len() != info.size {
        return false;
    }
    read_entry(&entry_path(options, label, &info.path)).await.is_some_and(|entry| entry.matches(info))
}

/// Makes `files` (from `store` under `prefix`) present under the cache root and returns that root.
pub(crate) async fn fetch(
    store: &Arc<dyn ObjectStore>,
    prefix: &str,
    label: &str,
    policy: &RetryPolicy,
    options: &StorageOptions,
    files: &[ObjectInfo],
) -> Result<PathBuf, StorageError> {
    let started = Instant::now();
    let root = cache_root(options, label);
    tokio::fs::create_dir_all(&root).await.map_err(io(&root))?;
    let mut wanted = Vec::new();
    let mut reused_bytes = 0u64;
    for info in files {
        if is_cached(options, label, &root, info).await {
            reused_bytes += info.size;
        } else {
            wanted.push(info);
        }
    }
    let downloader = Downloader::new(store, label, policy, options);
    let download_bytes: u64 = wanted.iter().map(|i| i.size).sum();
    // Owned items: a closure over `&ObjectInfo` makes the future too general for `tokio::spawn` callers.
    let (downloader, root_dir) = (&downloader, &root);
    stream::iter(wanted.iter().map(|info| (*info).clone()).collect::<Vec<ObjectInfo>>())
        .map(|info| async move { fetch_one(downloader, prefix, root_dir, &info).await })
        .buffer_unordered(options.download_concurrency.max(1))
        .try_collect::<()>()
        .await?;
    let secs = started.elapsed().as_secs_f64();
    tracing::info!(
        location = label,
        files_downloaded = wanted.len(),
        bytes_downloaded = download_bytes,
        files_reused = files.len() - wanted.len(),
        bytes_reused = reused_bytes,
        seconds = secs,
        "fetched into cache {}",
        root.display()
    );
    Ok(root)
}

async fn fetch_one(
    downloader: &Downloader<'_>,
    prefix: &str,
    root: &FsPath,
    info: &ObjectInfo,
) -> Result<(), StorageError> {
    let (label, options) = (downloader.label, downloader.options);
    let entry = entry_path(options, label, &info.path);
    // The entry goes first, so a crash mid-replace never leaves an old entry vouching for a new file.
    match tokio::fs::remove_file(&entry).await {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(StorageError::Io { path: entry, source: e }),
        _ => {}
    }
    let object = join(prefix, &info.path).unwrap_or_else(|| Path::from(info.path.as_str()));
    let job =
        Job { object, rel: info.path.clone(), size: info.size, etag: info.etag.clone(), dest: root.join(&info.path) };
    downloader.download(&job).await?;
    let parent = entry.parent().unwrap_or(FsPath::new("."));
    tokio::fs::create_dir_all(parent).await.map_err(io(parent))?;
    let json =
        serde_json::to_vec(&Entry::of(info)).map_err(|e| StorageError::Io { path: entry.clone(), source: e.into() })?;
    tokio::fs::write(&entry, json).await.map_err(io(&entry))
}
