//! Who may change the server: the admin surface (model load and unload, traffic-policy changes, over HTTP and
//! gRPC) is open, behind a bearer token, or switched off. Inference, health, metadata, statistics, the repository
//! index and reading a traffic policy stay open: they change nothing.
//!
//! The token travels as `Authorization: Bearer <token>` (HTTP header or gRPC metadata) and is compared in
//! constant time, so response timing does not reveal how much of a guess was right. A missing or wrong token
//! is 401 / UNAUTHENTICATED; a disabled admin API is 403 / PERMISSION_DENIED, as Triton answers a restricted API.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::state::AppState;

/// The policy the flags chose (`--admin-token`, `--disable-admin-api`).
#[derive(Clone, Default)]
pub enum AdminPolicy {
    /// Anyone may call the admin endpoints (the default, as in Triton and KServe's model servers).
    #[default]
    Open,
    /// Callers must present this bearer token.
    Token(Vec<u8>),
    /// The admin endpoints refuse every call.
    Disabled,
}

impl std::fmt::Debug for AdminPolicy {
    /// Never prints the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AdminPolicy::Open => "Open",
            AdminPolicy::Token(_) => "Token(..)",
            AdminPolicy::Disabled => "Disabled",
        })
    }
}

/// Why an admin call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    /// No `Authorization: Bearer` credential, or the wrong one.
    #[error("this endpoint needs the admin token: send `Authorization: Bearer <token>` (the server's --admin-token)")]
    Unauthenticated,
    /// `--disable-admin-api`.
    #[error("the admin API is disabled on this server (--disable-admin-api)")]
    Disabled,
}

impl AdminPolicy {
    /// Checks an `authorization` header or metadata value against the policy.
    pub fn check(&self, authorization: Option<&[u8]>) -> Result<(), AdminError> {
        match self {
            AdminPolicy::Open => Ok(()),
            AdminPolicy::Disabled => Err(AdminError::Disabled),
            AdminPolicy::Token(expected) => {
                let presented = authorization.and_then(bearer_token).unwrap_or_default();
                if constant_time_eq(presented, expected) { Ok(()) } else { Err(AdminError::Unauthenticated) }
            }
        }
    }
}

/// The credential of `Bearer <token>` (the scheme is case-insensitive, RFC 7235).
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    scheme.eq_ignore_ascii_case(b"bearer ").then(|| rest.trim_ascii())
}

/// Equality whose running time depends on the expected length only, never on where the first difference is.
fn constant_time_eq(presented: &[u8], expected: &[u8]) -> bool {
    let mut difference = u8::from(presented.len() != expected.len());
    for (i, e) in expected.iter().enumerate() {
        difference |= e ^ presented.get(i).copied().unwrap_or(!e);
    }
    std::hint::black_box(difference) == 0
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let status = match self {
            AdminError::Unauthenticated => StatusCode::UNAUTHORIZED,
            AdminError::Disabled => StatusCode::FORBIDDEN,
        };
        let mut response = (status, axum::Json(serde_json::json!({"error": self.to_string()}))).into_response();
        if self == AdminError::Unauthenticated {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<AdminError> for tonic::Status {
    fn from(e: AdminError) -> Self {
        match e {
            AdminError::Unauthenticated => tonic::Status::unauthenticated(e.to_string()),
            AdminError::Disabled => tonic::Status::permission_denied(e.to_string()),
        }
    }
}

/// An HTTP handler that takes this argument runs only for callers the admin policy lets through.
#[derive(Debug, Clone, Copy)]
pub struct AdminAccess;

impl FromRequestParts<AppState> for AdminAccess {
    type Rejection = AdminError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        state.admin.check(parts.headers.get(header::AUTHORIZATION).map(HeaderValue::as_bytes)).map(|()| AdminAccess)
    }
}

/// The same check for a gRPC call, from its metadata.
pub fn check_grpc<T>(state: &AppState, request: &tonic::Request<T>) -> Result<(), tonic::Status> {
    let authorization = request.metadata().get("authorization").map(|v| v.as_bytes());
    state.admin.check(authorization).map_err(tonic::Status::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_token_and_disabled_policies() {
        assert_eq!(AdminPolicy::Open.check(None), Ok(()));
        assert_eq!(AdminPolicy::Disabled.check(Some(b"Bearer x")), Err(AdminError::Disabled));
        let token = AdminPolicy::Token(b"s3cret".to_vec());
        assert_eq!(token.check(Some(b"Bearer s3cret")), Ok(()));
        assert_eq!(token.check(Some(b"bearer  s3cret ")), Ok(()));
        for wrong in
            [&b"Bearer s3cre"[..], b"Bearer s3cret2", b"Bearer S3cret", b"Basic s3cret", b"s3cret", b"Bearer ", b""]
        {
            assert_eq!(
                token.check(Some(wrong)),
                Err(AdminError::Unauthenticated),
                "{:?}",
                String::from_utf8_lossy(wrong)
            );
        }
        assert_eq!(token.check(None), Err(AdminError::Unauthenticated));
        assert_eq!(format!("{token:?}"), "Token(..)");
    }

    #[test]
    fn constant_time_eq_is_plain_equality() {
        for (a, b) in
            [(&b""[..], &b""[..]), (b"a", b"a"), (b"ab", b"a"), (b"a", b"ab"), (b"\xff", b"\x00"), (b"", b"x")]
        {
            assert_eq!(constant_time_eq(a, b), a == b, "{a:?} {b:?}");
        }
    }
}
