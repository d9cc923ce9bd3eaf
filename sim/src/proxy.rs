//! Everything that is not Roles Anywhere goes to moto unchanged, so the SDK
//! can use the simulator as its single endpoint URL.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::http::request::Parts;
use hyper::{HeaderMap, Request, Response};

use crate::response::{ApiError, Body};
use crate::upstream::Upstream;

/// Connection-level headers (RFC 9110 §7.6.1) belong to one hop, not to the
/// request; `expect` is answered by our own server before we read the body.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "expect",
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for h in HOP_BY_HOP {
        headers.remove(*h);
    }
}

/// Sends the request (method, path and query, headers — Host as received —
/// and body) to moto and streams moto's response back.
pub(crate) async fn forward(upstream: &Upstream, parts: Parts, body: Bytes) -> Response<Body> {
    let path_and_query = parts.uri.path_and_query().map(|pq| pq.as_str()).unwrap_or("/");
    let uri = format!("{}{}", upstream.base_url, path_and_query);
    let mut req = match Request::builder()
        .method(parts.method.clone())
        .uri(&uri)
        .body(Full::new(body))
    {
        Ok(r) => r,
        Err(e) => return ApiError::internal(format!("cannot forward to {uri}: {e}")).into_response(),
    };
    *req.headers_mut() = parts.headers;
    strip_hop_by_hop(req.headers_mut());
    match upstream.http.request(req).await {
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Response::from_parts(parts, body.boxed())
        }
        Err(e) => {
            let mut resp = ApiError::internal(format!("upstream {} did not answer: {e}", upstream.base_url))
                .into_response();
            *resp.status_mut() = hyper::StatusCode::BAD_GATEWAY;
            resp
        }
    }
}
