//! What a downloaded object's bytes should hash to, as its store states it, and the check that they do.
//!
//! A body can arrive at its full length with wrong bytes (a faulty proxy or middlebox, a path without TLS), and
//! the model would then load corrupt, or fail with an error about its format. Stores state an object's digest in
//! response headers that object_store does not read: [`DigestConnector`] wraps object_store's HTTP client and
//! puts what each response states into its extensions, which reach `GetResult::extensions`. Trusted, in order:
//! - S3's `x-amz-checksum-crc64nvme`, `-crc32c` and `-crc32` (asked for on GETs, see `crate::checksum_gets`),
//!   only on a whole-object answer and only of a full-object kind: a multipart upload's composite checksum is
//!   not a digest of the bytes.
//! - GCS's `x-goog-hash` (`crc32c=`, `md5=`), unless the object is stored with a content encoding (the bytes
//!   served may then be decoded ones);
//! - Azure's `x-ms-blob-content-md5`, and `Content-MD5` on a whole-object answer (Azure, and plain HTTP servers
//!   that send it);
//! - on S3 only, a strong ETag of 32 hex digits (a single-part upload) of an object stored unencrypted or with
//!   S3's own keys (`AES256`), outside directory buckets and GCS's S3 interoperability: such an ETag is the MD5
//!   of the bytes. AWS computes it; an S3-compatible server (a custom endpoint) keeps it by convention.
//!
//! The CRCs, `x-goog-hash` and AWS's own ETags are computed by the store: a mismatch with them always fails. The
//! others are written by whoever uploaded the object, or follow a convention a store may not keep, so they can be
//! wrong about bytes that are right: when two whole downloads hash the same and both differ from such a digest,
//! the bytes are taken, with a warning (corruption on the way does not repeat itself). A second download is made
//! for that even with `--storage-retries 0`.
//!
//! An object whose answers state none of these is not checked. The check reads the assembled file back once
//! (MD5 at about 0.5 GB/s; the CRCs much faster), so a resumed download is covered as a whole. An object fetched in
//! ranged parts gets no CRC (S3 sends none with a range): it is checked against an MD5 ETag or a stored MD5 only.

use std::path::Path;

use async_trait::async_trait;
use base64::Engine as _;
use http::{HeaderMap, StatusCode};
use md5::Digest as _;
use object_store::ClientOptions;
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpRequest, HttpResponse, HttpService, ReqwestConnector,
};

use crate::retry::Pushback;

/// A digest algorithm a store states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Algorithm {
    /// CRC-64/NVME (S3's default for new uploads).
    Crc64Nvme,
    /// CRC-32C (Castagnoli).
    Crc32c,
    /// CRC-32 (ISO-HDLC, zlib's).
    Crc32,
    /// MD5.
    Md5,
}

impl Algorithm {
    fn name(self) -> &'static str {
        match self {
            Algorithm::Crc64Nvme => "CRC-64/NVME",
            Algorithm::Crc32c => "CRC-32C",
            Algorithm::Crc32 => "CRC-32",
            Algorithm::Md5 => "MD5",
        }
    }
}

/// The digest a store states for a whole object, and the header it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ObjectDigest {
    pub(crate) algorithm: Algorithm,
    pub(crate) value: Vec<u8>,
    pub(crate) header: &'static str,
    /// The store computed it from the bytes it holds (see the module docs): a mismatch always fails.
    pub(crate) computed_by_store: bool,
}

impl ObjectDigest {
    fn new(algorithm: Algorithm, value: Vec<u8>, header: &'static str) -> Option<Self> {
        let len = match algorithm {
            Algorithm::Crc64Nvme => 8,
            Algorithm::Crc32c | Algorithm::Crc32 => 4,
            Algorithm::Md5 => 16,
        };
        let computed_by_store = header.starts_with("x-amz-checksum-") || header == "x-goog-hash";
        (value.len() == len).then_some(ObjectDigest { algorithm, value, header, computed_by_store })
    }

    fn base64(algorithm: Algorithm, text: &str, header: &'static str) -> Option<Self> {
        let value = base64::engine::general_purpose::STANDARD.decode(text.trim()).ok()?;
        ObjectDigest::new(algorithm, value, header)
    }
}

/// What an S3 ETag is taken for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Etags {
    /// Not a digest (not S3, or a directory bucket, whose ETags are random).
    #[default]
    Ignored,
    /// The MD5 of a single-part object by convention (an S3-compatible server: MinIO, Ceph, R2, ...).
    Convention,
    /// The MD5 AWS S3 computes of a single-part object stored unencrypted or with its own keys.
    ComputedByStore,
}

/// The whole-object digest an answer states, if any (see the module docs for which are trusted).
pub(crate) fn stated_digest(status: StatusCode, headers: &HeaderMap, etags: Etags) -> Option<ObjectDigest> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    let whole = status == StatusCode::OK && !headers.contains_key(http::header::CONTENT_RANGE);
    if whole {
        let full_object = text("x-amz-checksum-type").is_none_or(|t| t.eq_ignore_ascii_case("FULL_OBJECT"));
        for (header, algorithm) in [
            ("x-amz-checksum-crc64nvme", Algorithm::Crc64Nvme),
            ("x-amz-checksum-crc32c", Algorithm::Crc32c),
            ("x-amz-checksum-crc32", Algorithm::Crc32),
        ] {
            // A composite checksum is written `value-N`.
            if let Some(value) = text(header).filter(|v| full_object && !v.contains('-'))
                && let Some(digest) = ObjectDigest::base64(algorithm, value, header)
            {
                return Some(digest);
            }
        }
    }
    if text("x-goog-stored-content-encoding").is_none_or(|e| e.eq_ignore_ascii_case("identity")) {
        let hashes = headers.get_all("x-goog-hash").iter().filter_map(|v| v.to_str().ok());
        let pairs: Vec<(&str, &str)> =
            hashes.flat_map(|v| v.split(',')).filter_map(|pair| pair.trim().split_once('=')).collect();
        for (key, algorithm) in [("crc32c", Algorithm::Crc32c), ("md5", Algorithm::Md5)] {
            // Base64 ends in `=`: only the first `=` separates the name.
            if let Some((_, value)) = pairs.iter().find(|(k, _)| k.eq_ignore_ascii_case(key))
                && let Some(digest) = ObjectDigest::base64(algorithm, value, "x-goog-hash")
            {
                return Some(digest);
            }
        }
    }
    if let Some(digest) =
        text("x-ms-blob-content-md5").and_then(|v| ObjectDigest::base64(Algorithm::Md5, v, "x-ms-blob-content-md5"))
    {
        return Some(digest);
    }
    if whole
        && let Some(digest) = text("content-md5").and_then(|v| ObjectDigest::base64(Algorithm::Md5, v, "Content-MD5"))
    {
        return Some(digest);
    }
    if etags != Etags::Ignored {
        // Only S3's own keys keep the ETag an MD5; KMS, DSSE, customer keys and anything newer do not.
        let own_keys = text("x-amz-server-side-encryption").is_none_or(|e| e.eq_ignore_ascii_case("AES256"))
            && !headers.contains_key("x-amz-server-side-encryption-customer-algorithm");
        // Directory buckets' ETags are not MD5s (their buckets are also told apart by name, see `location.rs`);
        // GCS's S3 interoperability answers with its own headers too.
        let other_kind = text("x-amz-storage-class").is_some_and(|c| c.eq_ignore_ascii_case("EXPRESS_ONEZONE"))
            || headers.keys().any(|k| k.as_str().starts_with("x-goog-"));
        let etag = text("etag").filter(|e| !e.starts_with("W/")).map(|e| e.trim_matches('"'));
        if let Some(etag) =
            etag.filter(|e| own_keys && !other_kind && e.len() == 32 && e.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            let value = (0..16).filter_map(|i| u8::from_str_radix(&etag[2 * i..2 * i + 2], 16).ok()).collect();
            let digest = ObjectDigest::new(Algorithm::Md5, value, "ETag");
            return digest.map(|d| ObjectDigest { computed_by_store: etags == Etags::ComputedByStore, ..d });
        }
    }
    None
}

/// Wraps object_store's own HTTP client and records in each answer's extensions the digest it states.
/// It also notes the store's `Retry-After` in [`Pushback`], which object_store's errors do not carry.
#[derive(Debug, Default)]
pub(crate) struct DigestConnector {
    /// What the store's ETags are.
    pub(crate) etags: Etags,
    /// Where the store's `Retry-After` goes.
    pub(crate) pushback: Pushback,
}

impl HttpConnector for DigestConnector {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        let inner = ReqwestConnector::default().connect(options)?;
        Ok(HttpClient::new(DigestService { inner, etags: self.etags, pushback: self.pushback.clone() }))
    }
}

#[derive(Debug)]
struct DigestService {
    inner: HttpClient,
    etags: Etags,
    pushback: Pushback,
}

#[async_trait]
impl HttpService for DigestService {
    async fn call(&self, request: HttpRequest) -> Result<HttpResponse, HttpError> {
        let mut response = self.inner.execute(request).await?;
        self.pushback.note(response.status(), response.headers());
        if let Some(digest) = stated_digest(response.status(), response.headers(), self.etags) {
            response.extensions_mut().insert(digest);
        }
        Ok(response)
    }
}

/// Downloaded bytes that do not match the digest their store states.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Mismatch {
    /// The digest of the bytes that arrived.
    pub(crate) got: Vec<u8>,
    /// How they differ, for the error.
    pub(crate) reason: String,
}

/// Hashes `path` with `expected`'s algorithm: `Err(Ok(_))` when the bytes do not match, `Err(Err(_))` when the file
/// could not be read back.
pub(crate) async fn verify(path: &Path, expected: &ObjectDigest) -> Result<(), Result<Mismatch, std::io::Error>> {
    let (path, expected) = (path.to_path_buf(), expected.clone());
    tokio::task::spawn_blocking(move || verify_blocking(&path, &expected))
        .await
        .map_err(|e| Err(std::io::Error::other(format!("the digest check stopped: {e}"))))?
}

fn verify_blocking(path: &Path, expected: &ObjectDigest) -> Result<(), Result<Mismatch, std::io::Error>> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(Err)?;
    let mut hasher = Hasher::new(expected.algorithm);
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer).map_err(Err)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    let got = hasher.finish();
    if got == expected.value {
        return Ok(());
    }
    let b64 = |v: &[u8]| base64::engine::general_purpose::STANDARD.encode(v);
    let reason = format!(
        "its bytes do not match the {} the store states in {} ({}, downloaded {})",
        expected.algorithm.name(),
        expected.header,
        b64(&expected.value),
        b64(&got)
    );
    Err(Ok(Mismatch { got, reason }))
}

enum Hasher {
    Crc(Box<crc_fast::Digest>, usize),
    Md5(Box<md5::Md5>),
}

impl Hasher {
    fn new(algorithm: Algorithm) -> Self {
        use crc_fast::CrcAlgorithm;
        match algorithm {
            Algorithm::Crc64Nvme => Hasher::Crc(Box::new(crc_fast::Digest::new(CrcAlgorithm::Crc64Nvme)), 8),
            Algorithm::Crc32c => Hasher::Crc(Box::new(crc_fast::Digest::new(CrcAlgorithm::Crc32Iscsi)), 4),
            Algorithm::Crc32 => Hasher::Crc(Box::new(crc_fast::Digest::new(CrcAlgorithm::Crc32IsoHdlc)), 4),
            Algorithm::Md5 => Hasher::Md5(Box::default()),
        }
    }

    fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Crc(digest, _) => digest.update(data),
            Hasher::Md5(md5) => md5.update(data),
        }
    }

    /// The digest as stores write it: big-endian bytes.
    fn finish(self) -> Vec<u8> {
        match self {
            Hasher::Crc(digest, width) => digest.finalize().to_be_bytes()[8 - width..].to_vec(),
            Hasher::Md5(md5) => md5.finalize().to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(*k, v.parse().unwrap());
        }
        map
    }

    fn digest_of(algorithm: Algorithm, data: &[u8]) -> Vec<u8> {
        let mut h = Hasher::new(algorithm);
        h.update(data);
        h.finish()
    }

    #[test]
    fn digests_match_the_values_stores_publish() {
        // "hello world": the values AWS, GCS and `md5sum` print.
        let data = b"hello world";
        let b64 = |v: Vec<u8>| base64::engine::general_purpose::STANDARD.encode(v);
        assert_eq!(b64(digest_of(Algorithm::Crc32, data)), "DUoRhQ==");
        assert_eq!(b64(digest_of(Algorithm::Crc32c, data)), "yZRlqg==");
        assert_eq!(b64(digest_of(Algorithm::Md5, data)), "XrY7u+Ae7tCTyyK7j1rNww==");
        // The catalogued check values (the CRC of "123456789").
        assert_eq!(digest_of(Algorithm::Crc64Nvme, b"123456789"), 0xAE8B_1486_0A79_9888u64.to_be_bytes());
        assert_eq!(digest_of(Algorithm::Crc32c, b"123456789"), 0xE306_9283u32.to_be_bytes());
    }

    #[test]
    fn trusts_whole_object_checksums_and_md5_etags_only() {
        let ok = StatusCode::OK;
        let partial = StatusCode::PARTIAL_CONTENT;
        let crc = headers(&[("x-amz-checksum-crc32", "DUoRhQ=="), ("etag", "\"5eb63bbbe01eeed093cb22bb8f5acdc3\"")]);
        assert_eq!(stated_digest(ok, &crc, Etags::Convention).unwrap().header, "x-amz-checksum-crc32");
        // A ranged answer's checksum is not the object's; its ETag still is.
        assert_eq!(stated_digest(partial, &crc, Etags::Convention).unwrap().header, "ETag");
        let composite = headers(&[("x-amz-checksum-crc32", "DUoRhQ==-3"), ("etag", "\"abc-3\"")]);
        assert_eq!(stated_digest(ok, &composite, Etags::Convention), None);
        let typed = headers(&[("x-amz-checksum-crc32", "DUoRhQ=="), ("x-amz-checksum-type", "COMPOSITE")]);
        assert_eq!(stated_digest(ok, &typed, Etags::Convention), None);
        let md5_etag = "\"5eb63bbbe01eeed093cb22bb8f5acdc3\"";
        for sse in ["aws:kms", "aws:kms:dsse", "aws:fsx"] {
            let encrypted = headers(&[("etag", md5_etag), ("x-amz-server-side-encryption", sse)]);
            assert_eq!(stated_digest(ok, &encrypted, Etags::Convention), None, "a {sse} object's ETag is not its MD5");
        }
        let customer = headers(&[("etag", md5_etag), ("x-amz-server-side-encryption-customer-algorithm", "AES256")]);
        assert_eq!(stated_digest(ok, &customer, Etags::Convention), None);
        let weak = headers(&[("etag", "W/\"5eb63bbbe01eeed093cb22bb8f5acdc3\"")]);
        assert_eq!(stated_digest(ok, &weak, Etags::Convention), None);
        let interop = headers(&[("etag", md5_etag), ("x-goog-stored-content-encoding", "gzip")]);
        assert_eq!(stated_digest(ok, &interop, Etags::Convention), None, "GCS's S3 interoperability");
        assert!(!stated_digest(ok, &headers(&[("etag", md5_etag)]), Etags::Convention).unwrap().computed_by_store);
        assert!(stated_digest(ok, &headers(&[("etag", md5_etag)]), Etags::ComputedByStore).unwrap().computed_by_store);
        assert!(stated_digest(ok, &crc, Etags::Convention).unwrap().computed_by_store);
        let express = headers(&[("etag", md5_etag), ("x-amz-storage-class", "EXPRESS_ONEZONE")]);
        assert_eq!(stated_digest(ok, &express, Etags::ComputedByStore), None, "a directory bucket's ETag is random");
        let sse_s3 =
            headers(&[("etag", "\"5eb63bbbe01eeed093cb22bb8f5acdc3\""), ("x-amz-server-side-encryption", "AES256")]);
        assert_eq!(
            stated_digest(ok, &sse_s3, Etags::Convention).unwrap().value,
            digest_of(Algorithm::Md5, b"hello world")
        );
        let etag = headers(&[("etag", "\"5eb63bbbe01eeed093cb22bb8f5acdc3\"")]);
        assert_eq!(stated_digest(ok, &etag, Etags::Ignored), None, "only S3's ETags are MD5s");
        let goog = headers(&[("x-goog-hash", "crc32c=yZRlqg=="), ("x-goog-hash", "md5=XrY7u+Ae7tCTyyK7j1rNww==")]);
        assert_eq!(stated_digest(partial, &goog, Etags::Ignored).unwrap().algorithm, Algorithm::Crc32c);
        let gzipped =
            headers(&[("x-goog-hash", "md5=XrY7u+Ae7tCTyyK7j1rNww=="), ("x-goog-stored-content-encoding", "gzip")]);
        assert_eq!(stated_digest(ok, &gzipped, Etags::Ignored), None);
        let content_md5 = headers(&[("content-md5", "XrY7u+Ae7tCTyyK7j1rNww==")]);
        assert_eq!(stated_digest(ok, &content_md5, Etags::Ignored).unwrap().algorithm, Algorithm::Md5);
        assert_eq!(stated_digest(partial, &content_md5, Etags::Ignored), None, "a range's Content-MD5 is the range's");
        let garbage = headers(&[("x-amz-checksum-crc32", "not base64!"), ("content-md5", "AAAA")]);
        assert_eq!(stated_digest(ok, &garbage, Etags::Ignored), None);
    }

    #[tokio::test]
    async fn verify_names_both_digests_on_a_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"hello world").unwrap();
        let good = ObjectDigest::new(Algorithm::Md5, digest_of(Algorithm::Md5, b"hello world"), "ETag").unwrap();
        assert!(verify(&path, &good).await.is_ok());
        std::fs::write(&path, b"hello wOrld").unwrap();
        let mismatch = verify(&path, &good).await.unwrap_err().unwrap();
        assert_eq!(mismatch.got, digest_of(Algorithm::Md5, b"hello wOrld"));
        let error = mismatch.reason;
        assert!(
            error.contains("MD5") && error.contains("ETag") && error.contains("XrY7u+Ae7tCTyyK7j1rNww=="),
            "{error}"
        );
        let crc =
            ObjectDigest::new(Algorithm::Crc64Nvme, digest_of(Algorithm::Crc64Nvme, b"hello wOrld"), "x").unwrap();
        assert!(verify(&path, &crc).await.is_ok());
    }
}
