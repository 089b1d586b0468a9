//! The repository checks against a real S3-compatible server: `moto_server` (installed by `scripts/setup`)
//! started here on 127.0.0.1, one per test, and opened the way the server opens it, from an `s3://` location.
//!
//! moto's request log tells which objects were downloaded, so the warm-restart check counts real GETs on the
//! wire. A missing `moto_server` fails the tests (it does not skip them): set `FERROSERVE_MOTO_SERVER` or run
//! `scripts/setup`.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path as FsPath, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferroserve_storage::{Storage, StorageError, StorageOptions};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

const KEY_ID: &str = "AKIDFERROSERVETEST";
const SECRET: &str = "ferroserve-secret-key-never-logged";

/// A `moto_server` process on a free port of 127.0.0.1, killed on drop; its output goes to `log`.
struct Moto {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn moto_server() -> PathBuf {
    if let Some(path) = std::env::var_os("FERROSERVE_MOTO_SERVER").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "FERROSERVE_MOTO_SERVER={} is not a file; unset it to use the workspace's .venv (`scripts/setup`)",
            path.display()
        );
        return path;
    }
    // The workspace root is two levels above this crate (server/storage).
    let manifest = FsPath::new(env!("CARGO_MANIFEST_DIR"));
    let root = manifest.ancestors().nth(2).unwrap_or(manifest);
    let path = root.join(".venv/bin/moto_server");
    assert!(
        path.is_file(),
        "the S3 tests need moto_server, not found at {}: run `scripts/setup` in the workspace root (it installs \
         moto[server] from tests/requirements.txt), or set FERROSERVE_MOTO_SERVER to its path",
        path.display()
    );
    path
}

impl Moto {
    /// Starts moto on port 0 and reads the port it bound from its "Running on http://127.0.0.1:PORT" line, which
    /// werkzeug prints once it listens. A port picked here and bound by moto later could be taken in between by
    /// another test's listener (the recording proxies bind while these tests run in parallel), and polling
    /// connects to a port nobody listens on can connect a socket to itself: either way a test would talk to the
    /// wrong server.
    fn start() -> Moto {
        let exe = moto_server();
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("moto.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(&exe)
            .args(["-H", "127.0.0.1", "-p", "0"])
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", exe.display()));
        let mut moto = Moto { child, port: 0, log, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        moto.port = loop {
            if let Some(port) = listening_port(&moto.log_text()) {
                break port;
            }
            if let Some(status) = moto.child.try_wait().unwrap() {
                panic!("moto_server exited ({status}) before listening: {}", moto.log_text());
            }
            assert!(Instant::now() < deadline, "moto_server not listening after 30 s: {}", moto.log_text());
            std::thread::sleep(Duration::from_millis(20));
        };
        moto
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// One plain, unsigned HTTP/1.1 request (moto accepts them); returns the status code.
    fn request(&self, method: &str, path: &str, headers: &str, body: &[u8]) -> u16 {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        let (port, len) = (self.port, body.len());
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{headers}Content-Length: {len}\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(body).unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).unwrap();
        let response = String::from_utf8_lossy(&response);
        response.split_whitespace().nth(1).and_then(|code| code.parse().ok()).unwrap_or(0)
    }

    fn create_bucket(&self, bucket: &str) {
        let status = self.request("PUT", &format!("/{bucket}"), "", b"");
        assert_eq!(status, 200, "PUT /{bucket}: {}", self.log_text());
    }

    /// A store for uploading fixtures, signed with the test credentials.
    fn store(&self, bucket: &str) -> Arc<dyn ObjectStore> {
        let store = AmazonS3Builder::new()
            .with_endpoint(self.endpoint())
            .with_allow_http(true)
            .with_bucket_name(bucket)
            .with_region("us-east-1")
            .with_access_key_id(KEY_ID)
            .with_secret_access_key(SECRET)
            .build()
            .unwrap();
        Arc::new(store)
    }

    /// The environment a server pointed at this moto would have.
    fn env(&self) -> HashMap<String, String> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint().as_str()),
            ("AWS_ACCESS_KEY_ID", KEY_ID),
            ("AWS_SECRET_ACCESS_KEY", SECRET),
            ("AWS_REGION", "us-east-1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// Object GETs (not listings) whose path starts with `/bucket/prefix/`, after a marker request has shown
    /// up in the log (the server logs each request after answering it).
    fn object_gets(&self, bucket_and_prefix: &str) -> usize {
        let marker = format!("/log-marker-{:016x}", fastrand::u64(..));
        self.request("GET", &marker, "", b"");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log_text();
            if log.contains(&marker) {
                let needle = format!("GET /{bucket_and_prefix}/");
                return log.lines().filter(|line| line.contains(&needle)).count();
            }
            assert!(Instant::now() < deadline, "moto never logged {marker}: {log}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The port in werkzeug's "Running on http://127.0.0.1:PORT" line.
fn listening_port(log: &str) -> Option<u16> {
    let (_, rest) = log.split_once("Running on http://127.0.0.1:")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok().filter(|&port| port != 0)
}

fn options(cache: &FsPath) -> StorageOptions {
    StorageOptions { cache_dir: cache.to_path_buf(), max_retries: 1, ..StorageOptions::default() }
}

async fn put(store: &Arc<dyn ObjectStore>, path: String, data: &'static [u8]) {
    store.put(&Path::from(path), data.into()).await.unwrap();
}

#[tokio::test]
async fn s3_bucket_root() {
    let moto = Moto::start();
    moto.create_bucket("root-bucket");
    let store = moto.store("root-bucket");
    let cache = tempfile::tempdir().unwrap();
    let storage = Storage::open_with_env("s3://root-bucket", options(cache.path()), &moto.env()).unwrap();
    assert!(!storage.is_local());
    assert_eq!(storage.describe(), "s3://root-bucket");
    common::conformance(&storage, async |path, data| put(&store, path.to_string(), data).await).await;
    let root = storage.fetch(&storage.list_files("m").await.unwrap()).await.unwrap();
    assert!(root.starts_with(cache.path()), "fetched into the cache: {}", root.display());
}

#[tokio::test]
async fn s3_nested_prefix_with_sibling_prefixes() {
    let moto = Moto::start();
    moto.create_bucket("models");
    let store = moto.store("models");
    put(&store, "repo/nestedx/m/config.pbtxt".into(), b"sibling prefix").await;
    put(&store, "elsewhere/m/config.pbtxt".into(), b"outside").await;
    let cache = tempfile::tempdir().unwrap();
    let storage = Storage::open_with_env("s3://models/repo/nested/", options(cache.path()), &moto.env()).unwrap();
    common::conformance(&storage, async |path, data| put(&store, format!("repo/nested/{path}"), data).await).await;
}

#[tokio::test]
async fn s3_warm_restart_makes_no_object_gets() {
    let moto = Moto::start();
    moto.create_bucket("models");
    let store = moto.store("models");
    for (path, data) in common::LAYOUT {
        put(&store, format!("repo/{path}"), data).await;
    }
    let cache = tempfile::tempdir().unwrap();
    let location = "s3://models/repo";

    let cold = Storage::open_with_env(location, options(cache.path()), &moto.env()).unwrap();
    let files = cold.list_files("m").await.unwrap();
    assert_eq!(files.len(), 4);
    assert!(files.iter().all(|f| f.etag.is_some()), "S3 listings carry ETags: {files:?}");
    let root = cold.fetch(&files).await.unwrap();
    assert_eq!(moto.object_gets("models/repo"), files.len(), "a cold fetch downloads each file once");
    assert_eq!(common::walk(&root.join("m")), ["1/model.onnx", "1/sub/extra.bin", "2/model.onnx", "config.pbtxt"]);

    // A restart: a new Storage over the same cache lists, finds everything current, and downloads nothing.
    let warm = Storage::open_with_env(location, options(cache.path()), &moto.env()).unwrap();
    let files = warm.list_files("m").await.unwrap();
    assert_eq!(warm.fetch(&files).await.unwrap(), root);
    assert_eq!(moto.object_gets("models/repo"), files.len(), "a warm fetch must not GET");

    // One object changes upstream: only it is downloaded again.
    put(&store, "repo/m/2/model.onnx".into(), b"model version two, retrained").await;
    let files = warm.list_files("m").await.unwrap();
    warm.fetch(&files).await.unwrap();
    assert_eq!(moto.object_gets("models/repo"), files.len() + 1);
    assert_eq!(std::fs::read(root.join("m/2/model.onnx")).unwrap(), b"model version two, retrained");
}

#[tokio::test]
async fn s3_missing_bucket_is_an_error_naming_the_location() {
    let moto = Moto::start();
    let cache = tempfile::tempdir().unwrap();
    let options = StorageOptions { max_retries: 0, ..options(cache.path()) };
    let storage = Storage::open_with_env("s3://no-such-bucket/repo", options, &moto.env()).unwrap();
    let error = storage.list_dirs("").await.unwrap_err();
    // object_store reports a failed listing (here 404 NoSuchBucket) as `Generic`, which this crate cannot tell
    // from a network failure without matching message text, so it counts as transient (`Unreachable`).
    let message = error.to_string();
    assert!(message.contains("s3://no-such-bucket/repo") && message.contains("NoSuchBucket"), "{message}");
    assert!(!message.contains(SECRET) && !format!("{error:?}").contains(SECRET), "{error:?}");
}

/// KServe's `AWS_ANONYMOUS_CREDENTIAL=true`: unsigned requests, no keys at all. moto, like S3, lets anonymous
/// callers list the bucket but read only objects whose ACL is `public-read`; a private object is a typed
/// [`StorageError::PermissionDenied`], never a retry loop or a panic.
#[tokio::test]
async fn s3_anonymous_credentials() {
    let moto = Moto::start();
    moto.create_bucket("public");
    let cache = tempfile::tempdir().unwrap();
    let env: HashMap<String, String> = [
        ("AWS_ENDPOINT_URL".to_string(), moto.endpoint()),
        ("AWS_ANONYMOUS_CREDENTIAL".to_string(), "true".to_string()),
    ]
    .into();
    let storage = Storage::open_with_env("s3://public/repo", options(cache.path()), &env).unwrap();
    common::conformance(&storage, async |path, data| {
        let status = moto.request("PUT", &format!("/public/repo/{path}"), "x-amz-acl: public-read\r\n", data);
        assert_eq!(status, 200, "PUT {path}");
    })
    .await;

    moto.store("public").put(&Path::from("repo/private/1/model.onnx"), b"secret".to_vec().into()).await.unwrap();
    let files = storage.list_files("private").await.unwrap();
    assert_eq!(files.len(), 1, "anonymous listing sees private objects");
    let error = storage.read("private/1/model.onnx").await.unwrap_err();
    assert!(matches!(error, StorageError::PermissionDenied { .. }), "{error}");
    assert!(!error.is_transient());
    let error = storage.fetch(&files).await.unwrap_err();
    assert!(matches!(error, StorageError::PermissionDenied { .. }), "{error}");
    assert!(common::walk(cache.path()).iter().all(|p| !p.contains("private")), "{:?}", common::walk(cache.path()));
}

/// Forwards TCP connections to `upstream`, keeping the head of every GET or HEAD that passes. Each head arrives in
/// one read here: hyper sends a connection's next request only after the last answer, and these heads are about
/// 1 KiB. With `refuse_checksum_mode`, a request asking for checksums is answered as Cloudflare R2 has answered it
/// (501), not forwarded.
fn recording_proxy(upstream: u16, refuse_checksum_mode: bool) -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = heads.clone();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let seen = seen.clone();
            std::thread::spawn(move || {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else { return };
                let (mut client_read, mut server_write) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (mut server_read, mut client_write) = (server, client);
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut server_read, &mut client_write);
                    let _ = client_write.shutdown(std::net::Shutdown::Both);
                });
                let mut buf = [0u8; 65536];
                loop {
                    let n = match client_read.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let text = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
                    if text.starts_with("get ") || text.starts_with("head ") {
                        seen.lock().unwrap().push(text.clone());
                    }
                    if refuse_checksum_mode && text.contains("\r\nx-amz-checksum-mode:") {
                        let body = "<Error><Code>NotImplemented</Code><Message>Header 'x-amz-checksum-mode' with value \
                                    'ENABLED' not implemented</Message></Error>";
                        let answer = format!(
                            "HTTP/1.1 501 Not Implemented\r\ncontent-type: application/xml\r\ncontent-length: {}\r\n\
                             connection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = (&client_read).write_all(answer.as_bytes());
                        break;
                    }
                    if server_write.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = server_write.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    (format!("http://127.0.0.1:{port}"), heads)
}

/// moto holding `common::LAYOUT` under `models/repo`, and a storage opened on it through [`recording_proxy`].
async fn layout_behind_proxy(
    refuse_checksum_mode: bool,
) -> (Moto, tempfile::TempDir, Storage, Arc<std::sync::Mutex<Vec<String>>>) {
    let moto = Moto::start();
    moto.create_bucket("models");
    let store = moto.store("models");
    for (path, data) in common::LAYOUT {
        put(&store, format!("repo/{path}"), data).await;
    }
    let (endpoint, heads) = recording_proxy(moto.port, refuse_checksum_mode);
    let mut env = moto.env();
    env.insert("AWS_ENDPOINT_URL".into(), endpoint);
    let cache = tempfile::tempdir().unwrap();
    let storage = Storage::open_with_env("s3://models/repo", options(cache.path()), &env).unwrap();
    (moto, cache, storage, heads)
}

/// Object GETs ask S3 for the object's checksum (`x-amz-checksum-mode: ENABLED`), and sign that header as S3
/// requires of every `x-amz-*` header; listings, which object_store would not sign it on, never carry it.
#[tokio::test]
async fn s3_object_gets_ask_for_checksums_signed_and_listings_do_not() {
    let (_moto, _cache, storage, heads) = layout_behind_proxy(false).await;
    let files = storage.list_files("m").await.unwrap();
    storage.fetch(&files).await.unwrap();
    let heads = heads.lock().unwrap().clone();
    let (lists, gets): (Vec<&String>, Vec<&String>) = heads.iter().partition(|h| h.contains("list-type=2"));
    assert!(!lists.is_empty() && gets.len() == files.len(), "{heads:#?}");
    for list in lists {
        assert!(!list.contains("x-amz-checksum-mode"), "{list}");
    }
    for get in gets {
        assert!(get.contains("\r\nx-amz-checksum-mode: enabled\r\n"), "{get}");
        let signed = get.split("signedheaders=").nth(1).and_then(|s| s.split(',').next()).unwrap_or_default();
        assert!(signed.split(';').any(|h| h == "x-amz-checksum-mode"), "{get}");
    }
}

/// A server that refuses the checksum-mode header (Cloudflare R2 has answered 501, Backblaze B2 400) costs one
/// refused GET: it and every later GET go without the header, and the files arrive.
#[tokio::test]
async fn s3_servers_refusing_checksum_mode_still_serve_downloads() {
    let (_moto, _cache, storage, heads) = layout_behind_proxy(true).await;
    let files = storage.list_files("m").await.unwrap();
    let root = storage.fetch(&files).await.unwrap();
    assert_eq!(common::walk(&root.join("m")), ["1/model.onnx", "1/sub/extra.bin", "2/model.onnx", "config.pbtxt"]);
    let heads = heads.lock().unwrap().clone();
    let asked = heads.iter().filter(|h| h.contains("x-amz-checksum-mode")).count();
    assert!((1..=4).contains(&asked), "refused once per GET in flight at most, then never asked: {heads:#?}");
}
