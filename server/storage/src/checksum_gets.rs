//! S3 answers a GET with the object's checksum (`x-amz-checksum-*`, computed by the store when the object was
//! uploaded with one: current AWS SDKs do so by default) only when asked with `x-amz-checksum-mode: ENABLED`.
//! object_store signs a default header on GET and HEAD requests but not on listings, and S3 refuses a request with
//! an unsigned `x-amz-*` header. So an S3 location gets two clients: one with the header, for GETs only, and one
//! without, for everything else. They share one credential provider, so credentials are fetched once, and never
//! with the header.
//!
//! Some S3-compatible servers refuse the header instead of ignoring it (Cloudflare R2 has answered 501
//! "Header 'x-amz-checksum-mode' ... not implemented", Backblaze B2 "Unsupported header"). The first such refusal
//! sends that GET, and every later one, through the client without it.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions,
    PutOptions, PutPayload, PutResult, RenameOptions,
};

/// The header that asks S3 for an object's checksum.
pub(crate) const CHECKSUM_MODE: (&str, &str) = ("x-amz-checksum-mode", "ENABLED");

/// Sends GETs (and HEADs, which object_store makes as GETs) to `gets`, everything else to `rest`.
#[derive(Debug)]
pub(crate) struct ChecksumGets {
    rest: Arc<dyn ObjectStore>,
    gets: Arc<dyn ObjectStore>,
    /// The server refused the header once: every GET goes to `rest`.
    refused: AtomicBool,
}

impl ChecksumGets {
    pub(crate) fn new(rest: Arc<dyn ObjectStore>, gets: Arc<dyn ObjectStore>) -> Self {
        ChecksumGets { rest, gets, refused: AtomicBool::new(false) }
    }
}

/// Whether `error` is a server refusing the checksum-mode header (a GET of an object is never "not implemented"
/// otherwise).
fn refuses_checksum_mode(error: &object_store::Error) -> bool {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        text.push_str(&e.to_string());
        source = e.source();
    }
    let text = text.to_ascii_lowercase();
    text.contains("x-amz-checksum-mode") || text.contains("notimplemented") || text.contains("not implemented")
}

impl fmt::Display for ChecksumGets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.rest, f)
    }
}

#[async_trait]
impl ObjectStore for ChecksumGets {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.rest.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.rest.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
        if !self.refused.load(Ordering::Relaxed) {
            match self.gets.get_opts(location, options.clone()).await {
                Err(e) if refuses_checksum_mode(&e) => {
                    self.refused.store(true, Ordering::Relaxed);
                    tracing::warn!(store = %self.rest, error = %e, "the store refuses x-amz-checksum-mode; downloads go on without S3 checksums");
                }
                answer => return answer,
            }
        }
        self.rest.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> object_store::Result<Vec<Bytes>> {
        // Only ever used for small reads: the whole-object downloads go through `get_opts`.
        self.rest.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.rest.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.rest.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.rest.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.rest.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> object_store::Result<()> {
        self.rest.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> object_store::Result<()> {
        self.rest.rename_opts(from, to, options).await
    }
}
