//! Plain http(s) locations against a tiny HTTP/1.1 server on 127.0.0.1:0: a single file, and archives unpacked
//! into the cache once per ETag.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use ferroserve_storage::{Storage, StorageOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A request's head, read up to its blank line; `None` if the client closes first. One request per connection is
/// enough for these tests (they answer `Connection: close`).
async fn read_head(socket: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = socket.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(buf)
}

/// Serves `body` at every path with an ETag; counts GETs (HEADs not counted).
async fn serve(body: Vec<u8>, etag: &'static str) -> (String, Arc<AtomicUsize>) {
    serve_with(body, etag, "").await
}

/// [`serve`], adding `extra` (header lines, each ending in CRLF) to every answer.
async fn serve_with(body: Vec<u8>, etag: &'static str, extra: &'static str) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let gets = Arc::new(AtomicUsize::new(0));
    let counter = gets.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else { return };
            let (body, counter) = (body.clone(), counter.clone());
            tokio::spawn(async move {
                let Some(buf) = read_head(&mut socket).await else { return };
                let request = String::from_utf8_lossy(&buf).to_string();
                let head = request.starts_with("HEAD");
                let range = request.lines().find_map(|l| {
                    let value = l.strip_prefix("range: ").or_else(|| l.strip_prefix("Range: "))?;
                    let (a, b) = value.strip_prefix("bytes=")?.split_once('-')?;
                    Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?))
                });
                let (status, slice) = match range {
                    Some((a, b)) => ("206 Partial Content", &body[a..=b.min(body.len() - 1)]),
                    None => ("200 OK", &body[..]),
                };
                if !head {
                    counter.fetch_add(1, Ordering::SeqCst);
                }
                let mut response = format!(
                    "HTTP/1.1 {status}\r\ncontent-length: {}\r\netag: {etag}\r\n\
                     last-modified: Wed, 21 Oct 2015 07:28:00 GMT\r\nconnection: close\r\n",
                    slice.len()
                );
                response.push_str(extra);
                if let Some((a, _)) = range {
                    response.push_str(&format!("content-range: bytes {a}-{}/{}\r\n", a + slice.len() - 1, body.len()));
                }
                response.push_str("\r\n");
                let _ = socket.write_all(response.as_bytes()).await;
                if !head {
                    let _ = socket.write_all(slice).await;
                }
                let _ = socket.shutdown().await;
            });
        }
    });
    (format!("http://{addr}"), gets)
}

fn tar_gz(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, data) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        builder.append_data(&mut header, path, *data).unwrap();
    }
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(&builder.into_inner().unwrap()).unwrap();
    encoder.finish().unwrap()
}

fn options(cache: &std::path::Path) -> StorageOptions {
    StorageOptions { cache_dir: cache.to_path_buf(), max_retries: 1, ..StorageOptions::default() }
}

#[tokio::test]
async fn single_file_url_is_a_tree_of_one_file() {
    let data: Vec<u8> = (0..50_000u32).map(|i| (i % 253) as u8).collect();
    let (base, gets) = serve(data.clone(), "\"v1\"").await;
    let cache = tempfile::tempdir().unwrap();
    let url = format!("{base}/models/resnet/model.onnx?token=SECRET");
    let storage = Storage::open(&url, StorageOptions { part_size: 16_384, ..options(cache.path()) }).unwrap();
    assert!(!storage.describe().contains("SECRET"));
    assert!(storage.list_dirs("").await.unwrap().is_empty());
    let files = storage.list_files("").await.unwrap();
    assert_eq!(files.len(), 1);
    assert_eq!(
        (files[0].path.as_str(), files[0].size, files[0].etag.as_deref()),
        ("model.onnx", 50_000, Some("\"v1\""))
    );
    let root = storage.fetch(&files).await.unwrap();
    assert_eq!(std::fs::read(root.join("model.onnx")).unwrap(), data);
    assert_eq!(gets.load(Ordering::SeqCst), 4, "50 000 bytes in 16 KiB ranged parts");
    // Warm: listing (HEAD) only.
    let again = Storage::open(&url, options(cache.path())).unwrap();
    again.fetch(&again.list_files("").await.unwrap()).await.unwrap();
    assert_eq!(gets.load(Ordering::SeqCst), 4);
    assert_eq!(storage.read("model.onnx").await.unwrap().unwrap().len(), 50_000);
    assert_eq!(storage.read("other").await.unwrap(), None);
}

#[tokio::test]
async fn tar_gz_url_is_unpacked_once_per_etag() {
    let archive = tar_gz(&[("m/config.pbtxt", b"name: \"m\""), ("m/1/model.onnx", b"weights")]);
    let (base, gets) = serve(archive, "\"a1\"").await;
    let cache = tempfile::tempdir().unwrap();
    let url = format!("{base}/dl/model.tar.gz");
    let storage = Storage::open(&url, options(cache.path())).unwrap();
    assert!(!storage.is_local());
    assert_eq!(storage.list_dirs("").await.unwrap(), ["m"]);
    let files = storage.list_files("m").await.unwrap();
    assert_eq!(files.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(), ["m/1/model.onnx", "m/config.pbtxt"]);
    assert_eq!(storage.read("m/config.pbtxt").await.unwrap().as_deref(), Some(&b"name: \"m\""[..]));
    let root = storage.fetch(&files).await.unwrap();
    assert_eq!(std::fs::read(root.join("m/1/model.onnx")).unwrap(), b"weights");
    assert_eq!(gets.load(Ordering::SeqCst), 1);
    // A restart reuses the unpacked tree after a HEAD.
    let again = Storage::open(&url, options(cache.path())).unwrap();
    assert_eq!(again.list_dirs("").await.unwrap(), ["m"]);
    assert_eq!(gets.load(Ordering::SeqCst), 1);
    assert!(common_leftovers(cache.path()).is_empty());
}

fn common_leftovers(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir.join(std::fs::read_dir(dir).unwrap().next().unwrap().unwrap().file_name()))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect()
}

/// How [`serve_failing`] answers every request.
#[derive(Clone, Copy)]
enum Failure {
    /// This status, with a body that echoes the request line (query string included), as some servers do.
    Status(u16),
    /// Read the request, then close the connection without a response.
    Drop,
}

/// A server that fails every request; the request heads it saw are kept.
async fn serve_failing(failure: Failure) -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else { return };
            let log = log.clone();
            tokio::spawn(async move {
                let Some(buf) = read_head(&mut socket).await else { return };
                let request = String::from_utf8_lossy(&buf).to_string();
                log.lock().unwrap().push(request.clone());
                let Failure::Status(code) = failure else {
                    drop(socket);
                    return;
                };
                let body = format!("<Error>bad request {}</Error>", request.lines().next().unwrap_or_default());
                let response = format!(
                    "HTTP/1.1 {code} Oops\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    (format!("http://{addr}"), seen)
}

const USER: &str = "alice-user-secret";
const PASSWORD: &str = "p@ss-word-secret";
const SIGNATURE: &str = "sig+secret/value=";
const CREDENTIAL: &str = "AKIDSECRET/20240101/us-east-1/s3/aws4_request";

/// Every form of the secrets the URL below carries, as written and decoded.
const SECRETS: &[&str] = &[
    USER,
    PASSWORD,
    "p%40ss-word-secret",
    SIGNATURE,
    "sig%2Bsecret%2Fvalue%3D",
    CREDENTIAL,
    "AKIDSECRET",
    "X-Amz-Signature",
    "X-Amz-Credential",
];

/// `base` plus userinfo and a pre-signed query, naming `file`.
fn secret_url(base: &str, file: &str) -> String {
    let host = base.strip_prefix("http://").unwrap();
    format!(
        "http://{USER}:p%40ss-word-secret@{host}/private/dir/{file}?X-Amz-Signature=sig%2Bsecret%2Fvalue%3D\
         &X-Amz-Credential=AKIDSECRET%2F20240101%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Expires=3600"
    )
}

/// Display and Debug of the error and of every error in its `source()` chain.
fn all_text(error: &ferroserve_storage::StorageError) -> String {
    let mut text = format!("{error}\n{error:?}");
    let mut next = std::error::Error::source(error);
    while let Some(e) = next {
        text.push_str(&format!("\n{e}\n{e:?}"));
        next = e.source();
    }
    text
}

fn assert_no_secrets(error: &ferroserve_storage::StorageError) {
    let text = all_text(error);
    for secret in SECRETS {
        assert!(!text.contains(secret), "`{secret}` leaked:\n{text}");
    }
}

fn failing_options(cache: &std::path::Path) -> StorageOptions {
    StorageOptions { cache_dir: cache.to_path_buf(), max_retries: 1, ..StorageOptions::default() }
}

#[tokio::test]
async fn server_errors_never_show_url_secrets() {
    let (base, seen) = serve_failing(Failure::Status(500)).await;
    let cache = tempfile::tempdir().unwrap();
    for file in ["model.onnx", "model.tar.gz"] {
        let storage = Storage::open(&secret_url(&base, file), failing_options(cache.path())).unwrap();
        assert!(SECRETS.iter().all(|s| !storage.describe().contains(s) && !format!("{storage:?}").contains(s)));
        let error = storage.list_files("").await.unwrap_err();
        assert!(error.is_transient(), "{error:?}");
        assert_no_secrets(&error);
        let text = all_text(&error);
        assert!(text.contains(&format!("{base}/private/dir/{file}")), "the URL stays, redacted: {text}");
        assert!(text.contains("500"), "{text}");
        if file == "model.onnx" {
            // A GET's error carries the response body, which here echoes the request line, query and all.
            let error = storage.read(file).await.unwrap_err();
            assert_no_secrets(&error);
            let text = all_text(&error);
            assert!(text.contains("bad request GET /private/dir/model.onnx"), "the body is kept, redacted: {text}");
        }
    }
    // The server did get the query (pre-signed URLs must keep working).
    assert!(seen.lock().unwrap().iter().all(|r| r.contains("X-Amz-Signature=sig%2Bsecret")), "{:?}", seen);
}

#[tokio::test]
async fn dropped_connections_never_show_url_secrets() {
    let (base, _) = serve_failing(Failure::Drop).await;
    let cache = tempfile::tempdir().unwrap();
    let storage = Storage::open(&secret_url(&base, "model.onnx"), failing_options(cache.path())).unwrap();
    let error = storage.list_files("").await.unwrap_err();
    assert!(error.is_transient(), "{error:?}");
    assert_no_secrets(&error);
    assert_no_secrets(&storage.read("model.onnx").await.unwrap_err());
}

#[tokio::test]
async fn not_found_and_forbidden_never_show_url_secrets() {
    let cache = tempfile::tempdir().unwrap();
    let (base, _) = serve_failing(Failure::Status(404)).await;
    for file in ["model.onnx", "model.zip"] {
        let storage = Storage::open(&secret_url(&base, file), failing_options(cache.path())).unwrap();
        let error = storage.list_files("").await.unwrap_err();
        assert!(matches!(error, ferroserve_storage::StorageError::NotFound { .. }), "{error:?}");
        assert!(!error.is_transient());
        assert_no_secrets(&error);
    }
    let (base, _) = serve_failing(Failure::Status(403)).await;
    let storage = Storage::open(&secret_url(&base, "model.onnx"), failing_options(cache.path())).unwrap();
    let error = storage.list_files("").await.unwrap_err();
    assert!(matches!(error, ferroserve_storage::StorageError::PermissionDenied { .. }), "{error:?}");
    assert_no_secrets(&error);
}

/// What the download check does with the digest an answer states (see `digest.rs`): a right one passes with one
/// GET; a stored MD5 (the uploader's word) that two downloads both disagree with is taken, even with no retries;
/// a digest the store computed that the bytes never match fails as `Corrupted`, transient, leaving nothing behind.
#[tokio::test]
async fn downloads_are_checked_against_the_digest_stated() {
    let data = b"hello world".to_vec();
    let cases: [(&'static str, u32, Result<usize, ()>); 3] = [
        ("content-md5: XrY7u+Ae7tCTyyK7j1rNww==\r\n", 0, Ok(1)),
        ("content-md5: AAAAAAAAAAAAAAAAAAAAAA==\r\n", 0, Ok(2)),
        ("x-goog-hash: crc32c=AAAAAA==\r\n", 1, Err(())),
    ];
    for (extra, max_retries, expected) in cases {
        let (base, gets) = serve_with(data.clone(), "\"v1\"", extra).await;
        let cache = tempfile::tempdir().unwrap();
        let url = format!("{base}/m/model.onnx");
        let storage = Storage::open(&url, StorageOptions { max_retries, ..options(cache.path()) }).unwrap();
        let files = storage.list_files("").await.unwrap();
        match (storage.fetch(&files).await, expected) {
            (Ok(root), Ok(count)) => {
                assert_eq!(std::fs::read(root.join("model.onnx")).unwrap(), data, "{extra}");
                assert_eq!(gets.load(Ordering::SeqCst), count, "{extra}");
            }
            (Err(error), Err(())) => {
                assert!(error.is_corrupted() && error.is_transient(), "{extra}: {error}");
                assert!(error.to_string().contains("CRC-32C") && error.to_string().contains("2 attempts"), "{error}");
                assert_eq!(gets.load(Ordering::SeqCst), 2, "{extra}");
                assert_eq!(common_leftovers(cache.path()), Vec::<String>::new(), "no temporary file is left");
            }
            (result, _) => panic!("{extra}: {result:?}"),
        }
    }
}

/// Answers every request `503` with `Retry-After: 2` until 2 s after the first one, then serves `body`; returns
/// the times of the requests, from the first.
async fn serve_shedding_load(body: &'static [u8]) -> (String, Arc<std::sync::Mutex<Vec<std::time::Duration>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let times = seen.clone();
    tokio::spawn(async move {
        let first = std::sync::OnceLock::new();
        loop {
            let Ok((mut socket, _)) = listener.accept().await else { return };
            let Some(buf) = read_head(&mut socket).await else { continue };
            let start = *first.get_or_init(std::time::Instant::now);
            let at = start.elapsed();
            seen.lock().unwrap().push(at);
            let len = body.len();
            let response = if at < std::time::Duration::from_secs(2) {
                "HTTP/1.1 503 Service Unavailable\r\nretry-after: 2\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    .to_string()
            } else {
                // A HEAD gets the GET's headers and no body.
                let body = if buf.starts_with(b"HEAD") { "" } else { std::str::from_utf8(body).unwrap() };
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\netag: \"s1\"\r\n\
                     last-modified: Wed, 21 Oct 2015 07:28:00 GMT\r\nconnection: close\r\n\r\n{body}",
                    len
                )
            };
            let _ = socket.write_all(response.as_bytes()).await;
            let _ = socket.shutdown().await;
        }
    });
    (format!("http://{addr}"), times)
}

#[tokio::test]
async fn a_store_shedding_load_is_retried_after_the_time_it_asks_for() {
    let (base, times) = serve_shedding_load(b"model").await;
    let cache = tempfile::tempdir().unwrap();
    // One retry: the backoff alone (about 0.1 s) would spend it while the store still sheds load.
    let storage = Storage::open(&format!("{base}/m/model.onnx"), options(cache.path())).unwrap();
    let files = storage.list_files("").await.unwrap();
    let root = storage.fetch(&files).await.unwrap();
    assert_eq!(std::fs::read(root.join("model.onnx")).unwrap(), b"model");
    let times = times.lock().unwrap().clone();
    assert_eq!(times.len(), 3, "a refused HEAD, the HEAD 2 s later, the GET: {times:?}");
    assert!(times[1] >= std::time::Duration::from_secs(2), "{times:?}");
}
