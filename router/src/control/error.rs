//! API errors and their gRPC status codes.

use crate::media::MediaError;
use tonic::{Code, Status};

/// An error an API call returns, with a reason a developer can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// Malformed request (bad id, bad SDP, ...).
    #[error("{0}")]
    InvalidArgument(String),
    /// Unknown room, session or track.
    #[error("{0}")]
    NotFound(String),
    /// Duplicate room, participant or subscription.
    #[error("{0}")]
    AlreadyExists(String),
    /// Offer/answer out of order.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A residency policy forbids it.
    #[error("{0}")]
    PermissionDenied(String),
    /// A configured limit is reached.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The media plane is shutting down.
    #[error("{0}")]
    Unavailable(String),
    /// The session failed inside the WebRTC stack and was closed.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// The gRPC code.
    pub fn code(&self) -> Code {
        match self {
            ApiError::InvalidArgument(_) => Code::InvalidArgument,
            ApiError::NotFound(_) => Code::NotFound,
            ApiError::AlreadyExists(_) => Code::AlreadyExists,
            ApiError::FailedPrecondition(_) => Code::FailedPrecondition,
            ApiError::ResourceExhausted(_) => Code::ResourceExhausted,
            ApiError::PermissionDenied(_) => Code::PermissionDenied,
            ApiError::Unavailable(_) => Code::Unavailable,
            ApiError::Internal(_) => Code::Internal,
        }
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        Status::new(e.code(), e.to_string())
    }
}

impl From<MediaError> for ApiError {
    fn from(e: MediaError) -> Self {
        match e {
            MediaError::BadSdp(_) => ApiError::InvalidArgument(e.to_string()),
            MediaError::UnknownSession => ApiError::NotFound("session not found".into()),
            MediaError::OutOfOrder(_) => ApiError::FailedPrecondition(e.to_string()),
            MediaError::Internal => ApiError::Internal(e.to_string()),
        }
    }
}

/// Validates an id field, naming it in the error (which quotes at most the
/// start of the value: see [`super::limits::echo`]).
pub fn parse_id<T, E: std::fmt::Display>(
    field: &str,
    value: &str,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> Result<T, ApiError> {
    parse(value).map_err(|e| {
        ApiError::InvalidArgument(format!("{field} {} {e}", super::limits::echo(value)))
    })
}
