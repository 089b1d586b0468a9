//! One error type for everything the storage layer does, with the store's error kept as the `source`.
//!
//! Messages name the location (always redacted: no credentials, no query strings) and the object, so an
//! operator can tell a typo in `--model-repository` from an expired token from a flaky network. Store errors
//! from a location whose URLs carry secrets arrive already redacted (`crate::redact`), source chain included.

use std::path::PathBuf;

/// A boxed error cause, kept as the `source` of a [`StorageError`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The location string could not be understood.
    #[error("invalid storage location `{location}`: {reason}")]
    InvalidLocation {
        /// The location, redacted.
        location: String,
        /// What was wrong, naming the accepted forms.
        reason: String,
    },
    /// A path inside the storage is not acceptable (absolute, `..`, empty segments).
    #[error("invalid path `{path}` in {location}: {reason}")]
    InvalidPath {
        /// The storage location, redacted.
        location: String,
        /// The offending path.
        path: String,
        /// What was wrong.
        reason: String,
    },
    /// The storage root or an object does not exist.
    #[error("{location}: `{path}` not found")]
    NotFound {
        /// The storage location, redacted.
        location: String,
        /// The missing path, relative to the storage root ("" for the root itself).
        path: String,
    },
    /// The credentials in use may not read the object (HTTP 401/403).
    #[error("{location}: permission denied reading `{path}`")]
    PermissionDenied {
        /// The storage location, redacted.
        location: String,
        /// The object, relative to the storage root.
        path: String,
        /// The store's error.
        source: object_store::Error,
    },
    /// The store kept failing with transient errors (timeouts, resets, 5xx, truncated bodies).
    #[error("{location} unreachable after {attempts} attempts reading `{path}`: {source}")]
    Unreachable {
        /// The storage location, redacted.
        location: String,
        /// The object being read ("" for a listing of the root).
        path: String,
        /// Requests made, the first included.
        attempts: u32,
        /// The last error.
        source: BoxError,
    },
    /// The object changed while it was being downloaded (its ETag no longer matches the listing).
    #[error("{location}: `{path}` changed during download; list again and retry")]
    Changed {
        /// The storage location, redacted.
        location: String,
        /// The object, relative to the storage root.
        path: String,
    },
    /// A downloaded or local file is not what the listing promised.
    #[error("{location}: `{path}` is corrupt: {reason}")]
    Integrity {
        /// The storage location, redacted.
        location: String,
        /// The file, relative to the storage root.
        path: String,
        /// What did not match, e.g. "size 10 bytes, listing says 12".
        reason: String,
    },
    /// A download's bytes did not match the digest its store states, in every attempt (see `crate::digest`):
    /// something on the way corrupts them, so a later attempt may succeed.
    #[error("{location}: `{path}` arrived corrupt: {reason}")]
    Corrupted {
        /// The storage location, redacted.
        location: String,
        /// The file, relative to the storage root.
        path: String,
        /// Which digest did not match, and how often.
        reason: String,
    },
    /// Reading or writing the local filesystem (cache or local repository) failed.
    #[error("cannot access {path}: {source}")]
    Io {
        /// The local path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// An archive (`.tar.gz`, `.tgz`, `.tar`, `.zip`) could not be unpacked.
    #[error("{location}: cannot unpack archive: {reason}")]
    Archive {
        /// The storage location, redacted.
        location: String,
        /// What was wrong, e.g. "entry `../x` escapes the destination".
        reason: String,
        /// The decoder's error, where there is one.
        source: Option<BoxError>,
    },
    /// Any other error from the object store (unsupported operation, bad configuration).
    #[error("{location}: {source}")]
    Store {
        /// The storage location, redacted.
        location: String,
        /// The store's error.
        source: object_store::Error,
    },
}

impl StorageError {
    /// Whether trying the same operation again later may succeed (network trouble, an object that changed
    /// mid-download), as opposed to a mistake in the location, credentials or content.
    pub fn is_transient(&self) -> bool {
        match self {
            StorageError::Unreachable { .. } | StorageError::Changed { .. } | StorageError::Corrupted { .. } => true,
            StorageError::Store { source, .. } => store_error_is_transient(source),
            _ => false,
        }
    }

    /// Whether a download arrived corrupt in every attempt: a later attempt may succeed, but only a changed object
    /// or a mended network makes it likely, so polling retries it only once the object changes.
    pub fn is_corrupted(&self) -> bool {
        matches!(self, StorageError::Corrupted { .. })
    }

    /// Maps an `object_store` error for `path` (relative to the storage root) on `location`.
    pub(crate) fn from_store(location: &str, path: &str, source: object_store::Error) -> Self {
        let location = location.to_string();
        let path = path.to_string();
        match source {
            object_store::Error::NotFound { .. } => StorageError::NotFound { location, path },
            object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. } => {
                StorageError::PermissionDenied { location, path, source }
            }
            object_store::Error::Precondition { .. } => StorageError::Changed { location, path },
            source if matches!(client_error_status(&source), Some(401 | 403)) => {
                StorageError::PermissionDenied { location, path, source }
            }
            source => StorageError::Store { location, source },
        }
    }
}

/// Whether an `object_store` error is worth retrying. `Generic` carries HTTP transport failures and every
/// response object_store has no variant for, so it is transient unless the store answered with a final client
/// error (a 403 on a list request is `Generic` too, and retrying it only delayed "permission denied" by seconds
/// and called it "unreachable"); everything else is a definite answer.
pub(crate) fn store_error_is_transient(error: &object_store::Error) -> bool {
    match error {
        object_store::Error::Generic { .. } => client_error_status(error).is_none(),
        object_store::Error::JoinError { .. } => true,
        _ => false,
    }
}

/// The status of a final client error named in an error's chain: 401, 403, 404, 405, 410, 416, and 400 unless
/// its body names a code that asks for another try (AWS retries `RequestTimeout`, `ExpiredToken` and the
/// web-identity credential path's `IDPCommunicationError`). object_store keeps its request error's status behind a
/// private type, and writes it in its message as "status code: 403 Forbidden: <body>".
fn client_error_status(error: &object_store::Error) -> Option<u16> {
    const RETRIED_400: [&str; 4] = ["RequestTimeout", "ExpiredToken", "IDPCommunicationError", "TokenRefreshRequired"];
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = next {
        let text = e.to_string();
        if let Some(at) = text.find("status code: ") {
            let status: u16 = text[at + 13..].get(..3)?.parse().ok()?;
            let final_status = match status {
                400 => !RETRIED_400.iter().any(|code| text.contains(code)),
                401 | 403 | 404 | 405 | 410 | 416 => true,
                _ => false,
            };
            return final_status.then_some(status);
        }
        next = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generic(message: &str) -> object_store::Error {
        object_store::Error::Generic { store: "S3", source: message.to_string().into() }
    }

    #[test]
    fn a_client_error_from_the_store_is_final_and_a_403_is_permission_denied() {
        let forbidden =
            generic("Error performing list request: Server returned non-2xx status code: 403 Forbidden: AccessDenied");
        assert!(!store_error_is_transient(&forbidden));
        let error = StorageError::from_store("s3://b/repo", "repo/", forbidden);
        assert!(matches!(error, StorageError::PermissionDenied { .. }), "{error:?}");
        assert!(!store_error_is_transient(&generic("Server returned non-2xx status code: 400 Bad Request: x")));
        for transient in [
            "Server returned non-2xx status code: 500 Internal Server Error: x",
            "Server returned non-2xx status code: 503 Service Unavailable: SlowDown",
            "Server returned non-2xx status code: 429 Too Many Requests: x",
            "Server returned non-2xx status code: 408 Request Timeout: x",
            "Server returned non-2xx status code: 400 Bad Request: <Code>RequestTimeout</Code>",
            "Server returned non-2xx status code: 400 Bad Request: <Code>IDPCommunicationError</Code>",
            "Server returned non-2xx status code: 409 Conflict: x",
            "HTTP error: error sending request: connection refused",
        ] {
            assert!(store_error_is_transient(&generic(transient)), "{transient}");
        }
    }
}
