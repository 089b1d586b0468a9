//! Location strings: parsing, redaction, and building the object store each scheme needs.
//!
//! The environment is passed in as a map rather than read inside, so the S3 rules (KServe's `S3_ENDPOINT`,
//! `S3_USE_HTTPS`, `S3_VERIFY_SSL`, `AWS_ANONYMOUS_CREDENTIAL`) are tested without touching the process
//! environment. Nothing here does I/O.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::http::HttpBuilder;
use object_store::{ClientConfigKey, ClientOptions, ObjectStore, RetryConfig};
use url::Url;

use crate::checksum_gets::{CHECKSUM_MODE, ChecksumGets};
use crate::digest::{DigestConnector, Etags};
use crate::error::StorageError;
use crate::redact::{RedactingStore, Redactor};
use crate::retry::Pushback;

const ACCEPTED: &str = "expected a local path, file:///abs/path, s3://bucket[/prefix], gs://bucket[/prefix], \
                        az://container[/prefix], https://<account>.blob.core.windows.net/<container>[/prefix], \
                        or an http(s):// URL of a single file or a .tar.gz/.tgz/.tar/.zip archive";

/// Which archive format a single-object URL holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ArchiveKind {
    /// `.tar.gz` / `.tgz`
    TarGz,
    /// `.tar`
    Tar,
    /// `.zip`
    Zip,
}

/// A parsed location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Location {
    /// A directory on local disk.
    Local(PathBuf),
    /// `s3://bucket/prefix`
    S3 { bucket: String, prefix: String },
    /// `gs://bucket/prefix`
    Gcs { bucket: String, prefix: String },
    /// `az://container/prefix` or `https://<account>.blob.core.windows.net/<container>/<prefix>?<sas>`.
    Azure { account: Option<String>, container: String, prefix: String, sas: Vec<(String, String)> },
    /// One object over plain HTTP(S): `base` is the URL of its directory (query kept), `name` its basename.
    Http { base: Url, name: String, archive: Option<ArchiveKind> },
}

/// The process environment, or a caller's stand-in for it ([`crate::Storage::open_with_env`]).
#[derive(Debug, Clone, Default)]
pub(crate) struct Env(pub(crate) BTreeMap<String, String>);

impl Env {
    /// The current process environment (variables that are not UTF-8 are skipped).
    pub(crate) fn from_process() -> Self {
        Env(std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))).collect())
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str).filter(|v| !v.is_empty())
    }

    fn flag(&self, key: &str) -> Option<bool> {
        self.get(key).map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
    }
}

/// The location for logs and errors: URL userinfo, query strings and fragments removed; trailing '/' trimmed.
pub(crate) fn redact(location: &str) -> String {
    let trimmed = location.trim();
    match Url::parse(trimmed) {
        Ok(mut url) if url.scheme().len() > 1 => {
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.set_query(None);
            url.set_fragment(None);
            let text = url.to_string();
            text.trim_end_matches('/').to_string()
        }
        // A plain path (or a Windows drive letter, which parses as a one-letter scheme).
        _ => {
            let cut = trimmed.find(['?', '#']).map_or(trimmed, |i| &trimmed[..i]);
            if cut.len() > 1 { cut.trim_end_matches('/').to_string() } else { cut.to_string() }
        }
    }
}

fn invalid(location: &str, reason: impl Into<String>) -> StorageError {
    StorageError::InvalidLocation { location: redact(location), reason: reason.into() }
}

fn bucket_and_prefix(location: &str, url: &Url) -> Result<(String, String), StorageError> {
    let bucket = url.host_str().filter(|h| !h.is_empty()).ok_or_else(|| invalid(location, "missing bucket name"))?;
    Ok((bucket.to_string(), url.path().trim_matches('/').to_string()))
}

/// Parses a location string; see the crate docs for the accepted forms.
pub(crate) fn parse(location: &str) -> Result<Location, StorageError> {
    let location = location.trim();
    if location.is_empty() {
        return Err(invalid(location, format!("empty location; {ACCEPTED}")));
    }
    let Some((scheme, _)) = location.split_once("://") else {
        return Ok(Location::Local(PathBuf::from(location)));
    };
    let url = Url::parse(location).map_err(|e| invalid(location, format!("{e}; {ACCEPTED}")))?;
    match scheme.to_ascii_lowercase().as_str() {
        "file" => {
            let path = url.to_file_path().map_err(|()| invalid(location, "file:// needs an absolute path"))?;
            Ok(Location::Local(path))
        }
        "s3" | "s3a" => bucket_and_prefix(location, &url).map(|(bucket, prefix)| Location::S3 { bucket, prefix }),
        "gs" | "gcs" => bucket_and_prefix(location, &url).map(|(bucket, prefix)| Location::Gcs { bucket, prefix }),
        "az" | "azure" | "abfs" | "abfss" => {
            let (container, prefix) = bucket_and_prefix(location, &url)?;
            Ok(Location::Azure { account: None, container, prefix, sas: Vec::new() })
        }
        "http" | "https" => {
            let host = url.host_str().unwrap_or_default();
            if let Some(account) = host.strip_suffix(".blob.core.windows.net") {
                let path = url.path().trim_matches('/');
                let (container, prefix) = path.split_once('/').unwrap_or((path, ""));
                if container.is_empty() {
                    return Err(invalid(location, "Azure blob URL needs a container"));
                }
                let sas = url.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
                return Ok(Location::Azure {
                    account: Some(account.to_string()),
                    container: container.to_string(),
                    prefix: prefix.to_string(),
                    sas,
                });
            }
            http_object(location, url)
        }
        other => Err(invalid(location, format!("unsupported scheme `{other}`; {ACCEPTED}"))),
    }
}

fn http_object(location: &str, url: Url) -> Result<Location, StorageError> {
    let segments: Vec<String> = url.path_segments().map(|s| s.map(str::to_string).collect()).unwrap_or_default();
    let Some((name, dirs)) = segments.split_last().filter(|(name, _)| !name.is_empty()) else {
        return Err(invalid(location, "an http(s) URL must name a file, not a directory"));
    };
    let decoded = percent_decode(name);
    let lower = decoded.to_ascii_lowercase();
    let archive = if lower.ends_with(".tar.gz") || lower.ends_with(".tgz") {
        Some(ArchiveKind::TarGz)
    } else if lower.ends_with(".tar") {
        Some(ArchiveKind::Tar)
    } else if lower.ends_with(".zip") {
        Some(ArchiveKind::Zip)
    } else {
        None
    };
    let mut base = url.clone();
    base.set_fragment(None);
    base.path_segments_mut().map_err(|()| invalid(location, "URL cannot have a path"))?.clear().extend(dirs);
    Ok(Location::Http { base, name: decoded, archive })
}

/// A percent-encoded string decoded ('+' kept as '+').
pub(crate) fn percent_decode(segment: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", segment.replace('+', "%2B")).as_bytes())
        .next()
        .map_or_else(|| segment.to_string(), |(_, v)| v.into_owned())
}

/// object_store retries nothing itself: every store call is wrapped in our own retry loop
/// ([`crate::retry::RetryPolicy`], `--storage-retries`), which retries the body as well as the request. With
/// object_store retrying inside it too, `--storage-retries 5` made 36 requests to a failing store, and a hung
/// one held a load for about 18 minutes (object_store's own 180 s retry limit, six times over).
pub(crate) fn retry_config() -> RetryConfig {
    // With no retries, object_store's backoff and retry time limit never apply.
    RetryConfig { max_retries: 0, ..RetryConfig::default() }
}

fn client_options() -> ClientOptions {
    ClientOptions::new()
        .with_connect_timeout(Duration::from_secs(10))
        .with_timeout(Duration::from_secs(600))
        .with_read_timeout(Duration::from_secs(60))
}

/// The S3 builder for `bucket`: `AWS_*` variables as `AmazonS3Builder::from_env` reads them, plus KServe's.
#[cfg(test)]
pub(crate) fn s3_builder(bucket: &str, env: &Env) -> AmazonS3Builder {
    s3_builder_with(bucket, env, client_options(), &Pushback::default())
}

/// [`s3_builder`] from `options` (client options come first: `AWS_ALLOW_HTTP`, `AWS_PROXY_URL` and the like then
/// override them).
fn s3_builder_with(bucket: &str, env: &Env, options: ClientOptions, pushback: &Pushback) -> AmazonS3Builder {
    let mut builder = AmazonS3Builder::new().with_client_options(options).with_retry(retry_config());
    for (key, value) in &env.0 {
        if key.starts_with("AWS_")
            && let Ok(config_key) = key.to_ascii_lowercase().parse::<AmazonS3ConfigKey>()
        {
            builder = builder.with_config(config_key, value);
        }
    }
    builder = builder.with_bucket_name(bucket);
    if env.get("AWS_REGION").is_none() && env.get("AWS_DEFAULT_REGION").is_none() {
        builder = builder.with_region("us-east-1");
    }
    let mut endpoint = env.get("AWS_ENDPOINT_URL").or_else(|| env.get("AWS_ENDPOINT")).map(str::to_string);
    if endpoint.is_none()
        && let Some(host) = env.get("S3_ENDPOINT")
    {
        endpoint = Some(if host.contains("://") {
            host.to_string()
        } else {
            let scheme = if env.get("S3_USE_HTTPS") == Some("0") { "http" } else { "https" };
            format!("{scheme}://{host}")
        });
    }
    if let Some(endpoint) = &endpoint {
        // Custom endpoints (MinIO, moto, Ceph) rarely have per-bucket DNS: path-style requests.
        builder = builder.with_endpoint(endpoint.trim_end_matches('/')).with_virtual_hosted_style_request(false);
        if endpoint.to_ascii_lowercase().starts_with("http://") {
            builder = builder.with_allow_http(true);
        }
    }
    let etags = s3_etags(bucket, endpoint.as_deref());
    builder = builder.with_http_connector(DigestConnector { etags, pushback: pushback.clone() });
    let verify = env.get("S3_VERIFY_SSL").map(str::to_ascii_lowercase);
    if matches!(verify.as_deref(), Some("0" | "false" | "no" | "off")) {
        builder = builder.with_config(AmazonS3ConfigKey::Client(ClientConfigKey::AllowInvalidCertificates), "true");
    }
    if env.flag("AWS_ANONYMOUS_CREDENTIAL") == Some(true) {
        builder = builder.with_skip_signature(true);
    }
    builder
}

/// An S3 Express One Zone directory bucket (`name--zone--x-s3`, or `--xa-s3` in a Local Zone).
fn is_directory_bucket(bucket: &str) -> bool {
    bucket.ends_with("--x-s3") || bucket.ends_with("--xa-s3")
}

/// Whose ETags a bucket's are (see `crate::digest`): AWS computes a single-part object's MD5; an S3-compatible
/// server at a custom endpoint keeps the convention; a directory bucket's (named `...--x-s3`) are random.
pub(crate) fn s3_etags(bucket: &str, endpoint: Option<&str>) -> Etags {
    let aws = endpoint.is_none_or(|e| {
        let host = Url::parse(e).ok().and_then(|u| u.host_str().map(str::to_ascii_lowercase));
        host.is_some_and(|h| h.ends_with(".amazonaws.com"))
    });
    if is_directory_bucket(bucket) {
        Etags::Ignored
    } else if aws {
        Etags::ComputedByStore
    } else {
        Etags::Convention
    }
}

/// Builds the store for a remote location (not `Local`, whose store needs the directory to exist). When the
/// location's URLs carry secrets (`redactor` not empty), the store is wrapped so that none of its errors can
/// show them, and so are the builder's errors. Every answer's `Retry-After` is noted in `pushback`.
pub(crate) fn build_store(
    location: &Location,
    label: &str,
    env: &Env,
    redactor: &Arc<Redactor>,
    pushback: &Pushback,
) -> Result<Arc<dyn ObjectStore>, StorageError> {
    let connector = || DigestConnector { pushback: pushback.clone(), ..DigestConnector::default() };
    let map = |source| StorageError::Store { location: label.to_string(), source: redactor.store_error(source) };
    let store: Arc<dyn ObjectStore> = match location {
        Location::Local(_) => {
            return Err(StorageError::InvalidLocation { location: label.into(), reason: "local path".into() });
        }
        Location::S3 { bucket, .. } => {
            let builder = s3_builder_with(bucket, env, client_options(), pushback);
            let express = is_directory_bucket(bucket)
                || builder.get_config_value(&AmazonS3ConfigKey::S3Express).is_some_and(|v| v == "true");
            let rest = builder.build().map_err(map)?;
            if express {
                // A directory bucket's own session request would carry the header unsigned.
                Arc::new(rest)
            } else {
                let (name, value) = CHECKSUM_MODE;
                let mut checksum_mode = http::HeaderMap::new();
                checksum_mode.insert(name, http::HeaderValue::from_static(value));
                let gets = s3_builder_with(bucket, env, client_options().with_default_headers(checksum_mode), pushback)
                    .with_credentials(rest.credentials().clone())
                    .build()
                    .map_err(map)?;
                Arc::new(ChecksumGets::new(Arc::new(rest), Arc::new(gets)))
            }
        }
        Location::Gcs { bucket, .. } => {
            Arc::new(gcs_builder(bucket, env).with_http_connector(connector()).build().map_err(map)?)
        }
        Location::Azure { account, container, sas, .. } => {
            let builder = azure_builder(account.as_deref(), container, sas, env).with_http_connector(connector());
            Arc::new(builder.build().map_err(map)?)
        }
        Location::Http { base, .. } => {
            let builder = HttpBuilder::new()
                .with_url(base.as_str())
                .with_client_options(client_options().with_allow_http(base.scheme() == "http"))
                .with_retry(retry_config())
                .with_http_connector(connector());
            Arc::new(builder.build().map_err(map)?)
        }
    };
    Ok(RedactingStore::wrap(store, redactor))
}

/// The GCS builder for `bucket`: what `GoogleCloudStorageBuilder::from_env` reads (`GOOGLE_*`, `SERVICE_ACCOUNT`),
/// taken from `env`.
pub(crate) fn gcs_builder(bucket: &str, env: &Env) -> GoogleCloudStorageBuilder {
    let mut builder = GoogleCloudStorageBuilder::new();
    if let Some(path) = env.get("SERVICE_ACCOUNT") {
        builder = builder.with_service_account_path(path);
    }
    for (key, value) in &env.0 {
        if key.starts_with("GOOGLE_")
            && let Ok(config_key) = key.to_ascii_lowercase().parse::<GoogleConfigKey>()
        {
            builder = builder.with_config(config_key, value);
        }
    }
    builder
        .with_bucket_name(bucket)
        .with_client_options(client_options())
        .with_retry(retry_config())
        .with_http_connector(DigestConnector::default())
}

/// The Azure builder: what `MicrosoftAzureBuilder::from_env` reads (`AZURE_*`, `IDENTITY_ENDPOINT`), taken from
/// `env`, then the URL's parts.
pub(crate) fn azure_builder(
    account: Option<&str>,
    container: &str,
    sas: &[(String, String)],
    env: &Env,
) -> MicrosoftAzureBuilder {
    let mut builder = MicrosoftAzureBuilder::new();
    for (key, value) in &env.0 {
        if key.starts_with("AZURE_")
            && let Ok(config_key) = key.to_ascii_lowercase().parse::<AzureConfigKey>()
        {
            builder = builder.with_config(config_key, value);
        }
    }
    if let Some(endpoint) = env.get("IDENTITY_ENDPOINT") {
        builder = builder.with_msi_endpoint(endpoint);
    }
    if let Some(account) = account {
        builder = builder.with_account(account);
    }
    if !sas.is_empty() {
        builder = builder.with_sas_authorization(sas.to_vec());
    }
    builder
        .with_container_name(container)
        .with_client_options(client_options())
        .with_retry(retry_config())
        .with_http_connector(DigestConnector::default())
}

/// A stable 64-bit FNV-1a hash as 16 hex characters: the cache directory name for a location. (Not std's
/// `DefaultHasher`, whose output may change between Rust releases and would orphan the cache.)
pub(crate) fn cache_key(text: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

#[cfg(test)]
#[path = "location_tests.rs"]
mod tests;
