//! [`InferError`]: the one error taxonomy of the engine, mapped once per transport in the API crate.

/// Why a request (or a management call) failed, in terms a client can act on.
///
/// Messages are written for the client: they name the field and the limit. Internal details go to the log
/// where the error is created, and reach clients only as a short `Internal` message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InferError {
    /// Unknown model or version, or a shared-memory region not registered (404 / NOT_FOUND).
    #[error("{0}")]
    NotFound(String),
    /// The model exists but is not ready, or the server is shutting down (503 / UNAVAILABLE).
    #[error("{0}")]
    NotReady(String),
    /// The request is malformed or does not fit the model (400 / INVALID_ARGUMENT).
    #[error("{0}")]
    InvalidInput(String),
    /// A name the request would register is taken (400 / ALREADY_EXISTS), as Triton answers a shared-memory
    /// region registered twice. HTTP has no closer status that Triton's clients expect.
    #[error("{0}")]
    AlreadyExists(String),
    /// A queue is full; the client should back off (429 / RESOURCE_EXHAUSTED).
    #[error("{0}")]
    Overloaded(String),
    /// The request's deadline passed before it ran (504 / DEADLINE_EXCEEDED).
    #[error("{0}")]
    Timeout(String),
    /// The request asks for something this server does not do (501 / UNIMPLEMENTED).
    #[error("{0}")]
    Unsupported(String),
    /// A fault on our side (500 / INTERNAL).
    #[error("{0}")]
    Internal(String),
}

/// The longest error text sent to a client. A message that quotes a request (a shape of a million dims, a
/// name of a megabyte) would otherwise be as large as the request: gRPC clients refuse a status message past
/// their metadata limit (8 KiB by default in grpc-core) and report that instead of the error.
pub(crate) const MAX_CLIENT_MESSAGE: usize = 2048;

impl InferError {
    /// The error text for a client: the whole message, or its first [`MAX_CLIENT_MESSAGE`] bytes (cut at a
    /// character boundary) and how much was left out.
    pub fn client_message(&self) -> String {
        let text = self.to_string();
        if text.len() <= MAX_CLIENT_MESSAGE {
            return text;
        }
        let mut cut = MAX_CLIENT_MESSAGE;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("{}... ({} more bytes)", &text[..cut], text.len() - cut)
    }

    /// A stable, low-cardinality label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            InferError::NotFound(_) => "not_found",
            InferError::NotReady(_) => "not_ready",
            InferError::InvalidInput(_) => "invalid_input",
            InferError::AlreadyExists(_) => "already_exists",
            InferError::Overloaded(_) => "overloaded",
            InferError::Timeout(_) => "timeout",
            InferError::Unsupported(_) => "unsupported",
            InferError::Internal(_) => "internal",
        }
    }

    /// The `Timeout` of a request still queued at its deadline (said by the batcher, an instance, or the
    /// caller's own timer, whichever notices first). It starts with Triton's words, which scripts match on.
    pub fn queue_timeout() -> Self {
        InferError::Timeout("Request timeout expired: the request timed out in the queue before it could run".into())
    }

    /// The same error (same status) with its message rewritten by `f`, to put it in a call's context.
    pub fn map_message(self, f: impl FnOnce(String) -> String) -> Self {
        match self {
            InferError::NotFound(m) => InferError::NotFound(f(m)),
            InferError::NotReady(m) => InferError::NotReady(f(m)),
            InferError::InvalidInput(m) => InferError::InvalidInput(f(m)),
            InferError::AlreadyExists(m) => InferError::AlreadyExists(f(m)),
            InferError::Overloaded(m) => InferError::Overloaded(f(m)),
            InferError::Timeout(m) => InferError::Timeout(f(m)),
            InferError::Unsupported(m) => InferError::Unsupported(f(m)),
            InferError::Internal(m) => InferError::Internal(f(m)),
        }
    }

    /// Shorthand for [`InferError::InvalidInput`].
    pub fn invalid(message: impl Into<String>) -> Self {
        InferError::InvalidInput(message.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_messages_are_bounded_at_a_character_boundary() {
        assert_eq!(InferError::invalid("short").client_message(), "short");
        let long = InferError::invalid(format!("shape {:?}", vec![0u8; 100_000]));
        let message = long.client_message();
        assert!(message.len() < MAX_CLIENT_MESSAGE + 64 && message.ends_with("more bytes)"), "{}", message.len());
        let wide = InferError::invalid("é".repeat(5000)).client_message();
        assert!(wide.starts_with("é") && wide.len() < MAX_CLIENT_MESSAGE + 64);
    }

    #[test]
    fn a_rewritten_message_keeps_its_status() {
        let e = InferError::Unsupported("files".into()).map_message(|m| format!("failed to load 'm', {m}"));
        assert_eq!(e, InferError::Unsupported("failed to load 'm', files".into()));
    }
}
