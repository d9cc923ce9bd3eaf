//! The HTTP/1.1 front door: routes each request to CreateSession, the
//! control plane, the simulator's own endpoints, or moto, and logs it.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::request_log::RequestRecord;
use crate::response::{self, ApiError, Body};
use crate::{classify, control_plane, proxy, query, session, State};

/// Accepts connections until the task is dropped; dropping it also drops
/// (and so aborts) every connection task in the `JoinSet`.
pub(crate) async fn serve(listener: TcpListener, state: Arc<State>) {
    let mut connections = JoinSet::new();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            // Out of file descriptors and the like: try again shortly.
            Err(_) => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = state.clone();
        connections.spawn(async move {
            let service = service_fn(move |req| handle(state.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
        while connections.try_join_next().is_some() {}
    }
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let (parts, body) = req.into_parts();
    // AWS API bodies are small: buffering them lets us read `Action=` and
    // verify signatures before deciding where the request goes.
    let body: Bytes = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return Ok(ApiError::validation(format!("unreadable request body: {e}")).into_response()),
    };
    let path = parts.uri.path().to_string();
    if let Some(admin) = path.strip_prefix("/__sim/") {
        return Ok(simulator_endpoint(&state, parts.method.as_str(), admin));
    }

    let raw_query = parts.uri.query().unwrap_or("").to_string();
    let query = query::parse(&raw_query);
    let scope = classify::credential_scope(&parts.headers, &query);
    let service = scope.as_ref().map(|(_, s)| s.clone());
    let mut operation = classify::operation(&parts.headers, &path, &query, &body);
    let method = parts.method.to_string();
    let is_x509 = parts
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.starts_with("AWS4-X509-"));

    let action = RequestRecord {
        service: service.clone(),
        operation: operation.clone(),
        method: method.clone(),
        path: path.clone(),
        status: 0,
    }
    .action();
    let mut holds = state.holds.subscribe();
    if holds.borrow().contains(&action) {
        state.held.fetch_add(1, Ordering::SeqCst);
        while holds.borrow_and_update().contains(&action) {
            if holds.changed().await.is_err() {
                break;
            }
        }
        state.held.fetch_sub(1, Ordering::SeqCst);
    }

    let resp = if is_x509 && method == "POST" && path.ends_with("/sessions") {
        operation = Some("CreateSession".into());
        reply(session::create_session(&state, &parts.headers, &raw_query, &body).await)
    } else if let Some((region, "rolesanywhere")) = scope.as_ref().map(|(r, s)| (r, s.as_str())) {
        match control_plane::route(&method, &path) {
            Some((op, id)) => {
                operation = Some(op.name());
                reply(control_plane::handle(&state, region, op, id, &query, &body).await)
            }
            None => ApiError::unknown_operation(format!("No Roles Anywhere operation at {method} {path}"))
                .into_response(),
        }
    } else {
        proxy::forward(&state.upstream, parts, body).await
    };

    state.log.push(RequestRecord {
        service,
        operation,
        method,
        path,
        status: resp.status().as_u16(),
    });
    Ok(resp)
}

fn reply(result: Result<(u16, serde_json::Value), ApiError>) -> Response<Body> {
    match result {
        Ok((status, value)) => response::json(status, &value),
        Err(e) => e.into_response(),
    }
}

/// `GET /__sim/requests` (the log as JSON) and `POST /__sim/requests/reset`,
/// for tests that drive the simulator as a separate process. Not logged.
fn simulator_endpoint(state: &State, method: &str, path: &str) -> Response<Body> {
    match (method, path) {
        ("GET", "requests") => response::json(
            200,
            &serde_json::to_value(state.log.snapshot()).expect("records serialize"),
        ),
        ("POST", "requests/reset") => {
            state.log.reset();
            response::json(200, &serde_json::json!({}))
        }
        _ => ApiError::unknown_operation(format!("no simulator endpoint {method} /__sim/{path}"))
            .into_response(),
    }
}
