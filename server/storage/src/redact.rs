//! Keeping secrets that ride in URLs (userinfo, pre-signed query strings, SAS tokens) out of error text.
//!
//! object_store puts the full request URL into its error messages (and into their `Debug`), and a server's
//! error body may echo parts of it back. For a location whose URLs carry secrets, every error that leaves the
//! store passes through [`RedactingStore`]: its source chain is replaced, level by level, with
//! [`RedactedError`]s that hold only the already-redacted text and keep no reference to the original error,
//! so neither `Display`, `Debug` nor `source()` can reach the secret. The error's variant (not found,
//! permission denied, generic...) is kept, so classification is unchanged.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, UploadPart,
};
use url::Url;

use crate::error::BoxError;
use crate::location;

/// What a secret value is replaced with.
const MASK: &str = "<redacted>";
/// Secret values shorter than this are removed only where they appear in URL form (`user:pw@`, `?query`), not
/// wherever they occur in a message: masking "1" or "abc" everywhere would garble messages for nothing.
const MIN_VALUE_LEN: usize = 4;
/// Source chains are copied at most this deep.
const MAX_DEPTH: usize = 32;

/// The secret-bearing parts of some URLs and what to replace them with. Its `Debug` shows no secrets.
#[derive(Clone, Default)]
pub(crate) struct Redactor {
    /// URL-shaped forms (`user:pw@`, `?query`, `#fragment`, the whole URL) and their replacements.
    contextual: Vec<(String, String)>,
    /// Bare secret values (password, username, query string, each query value), in every encoding seen.
    values: Vec<String>,
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redactor").field("forms", &(self.contextual.len() + self.values.len())).finish()
    }
}

impl Redactor {
    /// The redactor for a location string and the URL-valued variables of `env` that the stores read
    /// (endpoints, proxies): userinfo, query strings and fragments in any of them are secrets.
    pub(crate) fn for_location(location: &str, env: &location::Env) -> Redactor {
        let mut redactor = Redactor::default();
        redactor.add_url(location);
        for (key, value) in &env.0 {
            let read = ["AWS_", "S3_", "GOOGLE_", "AZURE_", "IDENTITY_"].iter().any(|p| key.starts_with(p));
            if read && value.contains("://") {
                redactor.add_url(value);
            }
        }
        redactor.finish()
    }

    /// Whether there is nothing to redact.
    pub(crate) fn is_empty(&self) -> bool {
        self.contextual.is_empty() && self.values.is_empty()
    }

    fn contextual(&mut self, form: String, replacement: impl Into<String>) {
        if !form.is_empty() {
            self.contextual.push((form, replacement.into()));
        }
    }

    fn value(&mut self, value: &str) {
        let decoded = location::percent_decode(value);
        let encoded: String = url::form_urlencoded::byte_serialize(decoded.as_bytes()).collect();
        let percent20 = encoded.replace('+', "%20");
        for form in [value.to_string(), decoded, encoded, percent20] {
            if form.chars().count() >= MIN_VALUE_LEN {
                self.values.push(form);
            }
        }
    }

    /// Adds the secret parts of one URL, both as written and as the `url` crate serialises it.
    fn add_url(&mut self, text: &str) {
        let text = text.trim();
        let Some((_, rest)) = text.split_once("://") else { return };
        let mut secret = false;
        // As written.
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        if let Some((userinfo, _)) = rest[..authority_end].rsplit_once('@') {
            secret = true;
            self.contextual(format!("{userinfo}@"), "");
            self.value(userinfo);
            for part in userinfo.split(':') {
                self.value(part);
            }
        }
        let (before_fragment, fragment) = rest.split_once('#').unwrap_or((rest, ""));
        if !fragment.is_empty() {
            secret = true;
            self.contextual(format!("#{fragment}"), "");
            self.value(fragment);
        }
        if let Some((_, query)) = before_fragment.split_once('?')
            && !query.is_empty()
        {
            secret = true;
            self.contextual(format!("?{query}"), "");
            self.value(query);
            for pair in query.split('&') {
                self.value(pair.split_once('=').map_or(pair, |(_, v)| v));
            }
        }
        // As the `url` crate serialises it (what object_store sends and prints).
        if let Ok(url) = Url::parse(text) {
            let (user, password) = (url.username(), url.password().unwrap_or(""));
            if !user.is_empty() || !password.is_empty() {
                secret = true;
                let userinfo = if password.is_empty() { user.to_string() } else { format!("{user}:{password}") };
                self.contextual(format!("{userinfo}@"), "");
                self.value(user);
                self.value(password);
            }
            if let Some(query) = url.query().filter(|q| !q.is_empty()) {
                secret = true;
                self.contextual(format!("?{query}"), "");
                self.value(query);
                for (_, value) in url.query_pairs() {
                    self.value(&value);
                }
            }
            if let Some(fragment) = url.fragment().filter(|f| !f.is_empty()) {
                secret = true;
                self.contextual(format!("#{fragment}"), "");
                self.value(fragment);
            }
            if secret {
                self.contextual(url.as_str().trim_end_matches('/').to_string(), location::redact(text));
            }
        }
        if secret {
            self.contextual(text.trim_end_matches('/').to_string(), location::redact(text));
        }
    }

    /// Longest forms first, so a form is never half-replaced by a shorter one inside it; duplicates dropped.
    fn finish(mut self) -> Redactor {
        self.contextual.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        self.contextual.dedup_by(|a, b| a.0 == b.0);
        self.values.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        self.values.dedup();
        self
    }

    /// `text` with every secret form removed.
    pub(crate) fn apply(&self, text: &str) -> String {
        let mut out = text.to_string();
        for (form, replacement) in &self.contextual {
            if out.contains(form.as_str()) {
                out = out.replace(form.as_str(), replacement);
            }
        }
        for value in &self.values {
            if out.contains(value.as_str()) {
                out = out.replace(value.as_str(), MASK);
            }
        }
        out
    }

    /// An `object_store` error of the same variant whose texts and source chain are redacted.
    pub(crate) fn store_error(&self, error: object_store::Error) -> object_store::Error {
        use object_store::Error as E;
        let chain = |source: BoxError| -> BoxError { Box::new(RedactedError::new(&*source, self)) };
        match error {
            E::Generic { store, source } => E::Generic { store, source: chain(source) },
            E::NotFound { path, source } => E::NotFound { path: self.apply(&path), source: chain(source) },
            E::NotSupported { source } => E::NotSupported { source: chain(source) },
            E::AlreadyExists { path, source } => E::AlreadyExists { path: self.apply(&path), source: chain(source) },
            E::Precondition { path, source } => E::Precondition { path: self.apply(&path), source: chain(source) },
            E::NotModified { path, source } => E::NotModified { path: self.apply(&path), source: chain(source) },
            E::PermissionDenied { path, source } => {
                E::PermissionDenied { path: self.apply(&path), source: chain(source) }
            }
            E::Unauthenticated { path, source } => {
                E::Unauthenticated { path: self.apply(&path), source: chain(source) }
            }
            E::NotImplemented { operation, implementer } => {
                E::NotImplemented { operation: self.apply(&operation), implementer: self.apply(&implementer) }
            }
            E::UnknownConfigurationKey { store, key } => E::UnknownConfigurationKey { store, key: self.apply(&key) },
            // `InvalidPath` names an object path and `JoinError` a task; neither holds a URL, but their sources
            // are concrete types that cannot be rewritten. `Generic` keeps them transient (as `JoinError` is),
            // and future variants fall here too.
            other => E::Generic { store: "object_store", source: Box::new(RedactedError::new(&other, self)) },
        }
    }
}

/// An error's text with secrets removed, and its source chain likewise; keeps no reference to the original.
#[derive(Debug)]
pub(crate) struct RedactedError {
    message: String,
    source: Option<Box<RedactedError>>,
}

impl RedactedError {
    fn new(error: &(dyn std::error::Error + 'static), redactor: &Redactor) -> RedactedError {
        RedactedError::at_depth(error, redactor, 0)
    }

    fn at_depth(error: &(dyn std::error::Error + 'static), redactor: &Redactor, depth: usize) -> RedactedError {
        let source = error
            .source()
            .filter(|_| depth < MAX_DEPTH)
            .map(|source| Box::new(RedactedError::at_depth(source, redactor, depth + 1)));
        RedactedError { message: redactor.apply(&error.to_string()), source }
    }
}

impl fmt::Display for RedactedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for RedactedError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Wraps a store whose URLs carry secrets: every error it returns, directly or from a stream, is redacted.
/// Its `Display` and `Debug` show only the inner store's redacted `Display`.
pub(crate) struct RedactingStore {
    inner: Arc<dyn ObjectStore>,
    redactor: Arc<Redactor>,
}

impl RedactingStore {
    /// `inner` itself when there is nothing to redact, else `inner` wrapped.
    pub(crate) fn wrap(inner: Arc<dyn ObjectStore>, redactor: &Arc<Redactor>) -> Arc<dyn ObjectStore> {
        if redactor.is_empty() { inner } else { Arc::new(RedactingStore { inner, redactor: redactor.clone() }) }
    }

    fn map<T>(&self, result: object_store::Result<T>) -> object_store::Result<T> {
        result.map_err(|e| self.redactor.store_error(e))
    }

    fn map_stream<T: Send + 'static>(
        &self,
        stream: BoxStream<'static, object_store::Result<T>>,
    ) -> BoxStream<'static, object_store::Result<T>> {
        let redactor = self.redactor.clone();
        stream.map_err(move |e| redactor.store_error(e)).boxed()
    }
}

impl fmt::Display for RedactingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redactor.apply(&self.inner.to_string()))
    }
}

impl fmt::Debug for RedactingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedactingStore({self})")
    }
}

#[async_trait]
impl ObjectStore for RedactingStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.map(self.inner.put_opts(location, payload, opts).await)
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let upload = self.map(self.inner.put_multipart_opts(location, opts).await)?;
        Ok(Box::new(RedactingUpload { inner: upload, redactor: self.redactor.clone() }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
        let mut result = self.map(self.inner.get_opts(location, options).await)?;
        result.payload = match result.payload {
            GetResultPayload::Stream(stream) => GetResultPayload::Stream(self.map_stream(stream)),
            #[allow(unreachable_patterns)]
            other => other,
        };
        Ok(result)
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> object_store::Result<Vec<Bytes>> {
        self.map(self.inner.get_ranges(location, ranges).await)
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.map_stream(self.inner.delete_stream(locations))
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.map_stream(self.inner.list(prefix))
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.map_stream(self.inner.list_with_offset(prefix, offset))
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.map(self.inner.list_with_delimiter(prefix).await)
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> object_store::Result<()> {
        self.map(self.inner.copy_opts(from, to, options).await)
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> object_store::Result<()> {
        self.map(self.inner.rename_opts(from, to, options).await)
    }
}

/// A multipart upload on a [`RedactingStore`]: its errors are redacted too.
struct RedactingUpload {
    inner: Box<dyn MultipartUpload>,
    redactor: Arc<Redactor>,
}

impl fmt::Debug for RedactingUpload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RedactingUpload")
    }
}

#[async_trait]
impl MultipartUpload for RedactingUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let (part, redactor) = (self.inner.put_part(data), self.redactor.clone());
        Box::pin(async move { part.await.map_err(|e| redactor.store_error(e)) })
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        self.inner.complete().await.map_err(|e| self.redactor.store_error(e))
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.inner.abort().await.map_err(|e| self.redactor.store_error(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain_text(error: &(dyn std::error::Error + 'static)) -> String {
        let mut text = format!("{error} {error:?}");
        let mut next = error.source();
        while let Some(e) = next {
            text.push_str(&format!(" | {e} {e:?}"));
            next = e.source();
        }
        text
    }

    #[test]
    fn removes_userinfo_query_and_their_encodings() {
        let location = "https://alice:p%40ss-word@host.example/dir/model.onnx?X-Amz-Signature=abc%2Bdef123&t=tok en";
        let redactor = Redactor::for_location(location, &location::Env::default());
        let message = "Error performing GET https://alice:p%40ss-word@host.example/dir/model.onnx?\
                       X-Amz-Signature=abc%2Bdef123&t=tok%20en - signature abc+def123 for p@ss-word (alice) bad";
        let out = redactor.apply(message);
        for secret in ["p%40ss-word", "p@ss-word", "alice", "abc%2Bdef123", "abc+def123", "X-Amz-Signature", "tok"] {
            assert!(!out.contains(secret), "{secret} in {out}");
        }
        assert!(out.starts_with("Error performing GET https://host.example/dir/model.onnx - signature"), "{out}");
        assert!(format!("{redactor:?}").starts_with("Redactor { forms: "));
    }

    #[test]
    fn plain_urls_have_nothing_to_redact() {
        let env = location::Env::default();
        assert!(Redactor::for_location("s3://bucket/prefix", &env).is_empty());
        assert!(Redactor::for_location("https://host/dir/model.onnx", &env).is_empty());
        assert!(Redactor::for_location("/srv/models", &env).is_empty());
        let env = location::Env([("AWS_ENDPOINT_URL".to_string(), "http://k:SECRETKEY@minio:9000".to_string())].into());
        assert!(
            Redactor::for_location("s3://bucket", &env).apply("GET http://k:SECRETKEY@minio:9000/b")
                == "GET http://minio:9000/b"
        );
    }

    #[test]
    fn store_errors_keep_their_variant_and_lose_the_secret() {
        let redactor = Redactor::for_location("http://h/m.onnx?sig=TOPSECRET", &location::Env::default());
        let inner: BoxError = "GET http://h/m.onnx?sig=TOPSECRET failed".into();
        let error = redactor.store_error(object_store::Error::NotFound { path: "m.onnx".into(), source: inner });
        assert!(matches!(error, object_store::Error::NotFound { .. }));
        let text = chain_text(&error);
        assert!(!text.contains("TOPSECRET") && text.contains("GET http://h/m.onnx failed"), "{text}");
        let join = object_store::Error::NotImplemented { operation: "x TOPSECRET".into(), implementer: "y".into() };
        assert!(!chain_text(&redactor.store_error(join)).contains("TOPSECRET"));
    }
}
