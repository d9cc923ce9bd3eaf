//! Response bodies and AWS REST-JSON errors.
//!
//! Errors follow what the SDKs parse (specs/rolesanywhere.md C1): the error
//! name in the `x-amzn-ErrorType` header, the text in `{"message": …}`.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::{Response, StatusCode};

/// Every response the simulator sends: its own (buffered) or moto's (streamed).
pub(crate) type Body = BoxBody<Bytes, hyper::Error>;

/// A buffered body.
pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

/// A JSON response with the headers AWS sends (a request id the SDKs log).
pub(crate) fn json(status: u16, value: &serde_json::Value) -> Response<Body> {
    Response::builder()
        .status(StatusCode::from_u16(status).expect("our own status codes are valid"))
        .header("content-type", "application/json")
        .header("x-amzn-requestid", crate::ids::uuid_v4())
        .body(full(value.to_string()))
        .expect("static headers are valid")
}

/// A failed API call, as AWS reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    /// The error name: `ValidationException`, `AccessDeniedException`, ...
    pub kind: &'static str,
    pub message: String,
}

impl ApiError {
    pub(crate) fn validation(message: impl Into<String>) -> Self {
        Self::new(400, "ValidationException", message)
    }
    /// A body that is not JSON (what AWS's JSON services answer for it).
    pub(crate) fn serialization(message: impl Into<String>) -> Self {
        Self::new(400, "SerializationException", message)
    }
    pub(crate) fn access_denied(message: impl Into<String>) -> Self {
        Self::new(403, "AccessDeniedException", message)
    }
    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, "ResourceNotFoundException", message)
    }
    pub(crate) fn too_many_tags(message: impl Into<String>) -> Self {
        Self::new(400, "TooManyTagsException", message)
    }
    pub(crate) fn unknown_operation(message: impl Into<String>) -> Self {
        Self::new(404, "UnknownOperationException", message)
    }
    /// Something between us and moto broke: not the caller's fault.
    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalServerException", message)
    }

    fn new(status: u16, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            kind,
            message: message.into(),
        }
    }

    pub(crate) fn into_response(self) -> Response<Body> {
        let mut resp = json(self.status, &serde_json::json!({ "message": self.message }));
        resp.headers_mut().insert(
            "x-amzn-errortype",
            self.kind.parse().expect("error names are ASCII"),
        );
        resp
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status, self.kind, self.message)
    }
}

impl std::error::Error for ApiError {}
