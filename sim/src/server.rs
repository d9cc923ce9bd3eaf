//! The HTTP/1.1 front door: routes each request to CreateSession, the
//! control plane, the simulator's own endpoints, or moto, and logs it.

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

use crate::faults::{self, FaultKind, FaultPhase};
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

/// Counts a request in `held` for as long as it lives.
struct HeldGuard<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> HeldGuard<'a> {
    fn new(count: &'a std::sync::atomic::AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        HeldGuard(count)
    }
}

impl Drop for HeldGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A fault that closes the connection: hyper drops it without an answer
/// when the service fails.
#[derive(Debug)]
struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("fault injection: connection dropped")
    }
}

impl std::error::Error for Dropped {}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response<Body>, Dropped> {
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
    let seq = state.faults.seen.fetch_add(1, Ordering::SeqCst) as u64;
    let frozen = || seq >= state.faults.freeze_at.load(Ordering::SeqCst);
    let discarding = || frozen() && state.faults.discarding.load(Ordering::SeqCst);
    let mut holds = state.holds.subscribe();
    let mut discarded = discarding();
    if !discarded && (frozen() || holds.borrow().contains(&action)) {
        let generation = state.faults.discard_generation.load(Ordering::SeqCst);
        // A guard, not a decrement after the loop: hyper drops this future
        // when the client goes away (a killed edgectl), and `held` must
        // not count it any longer.
        let _held = HeldGuard::new(&state.held);
        // Mark the current version seen before checking, so `changed`
        // only wakes us for a newer one.
        while (holds.borrow_and_update().contains(&action) || frozen()) && !discarding() {
            if holds.changed().await.is_err() {
                break;
            }
        }
        discarded = discarding() || state.faults.discard_generation.load(Ordering::SeqCst) != generation;
    }
    if discarded {
        // `unfreeze_discarding`: as if the client had never sent it.
        return finish(&state, service, operation, method, path, FaultKind::Drop, None);
    }

    let is_form = parts
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/x-www-form-urlencoded"));
    let fault = state.faults.decide(&action, &parts.headers).map(|(kind, phase)| {
        let (kind, resp) = faults::response(kind, &parts.headers, service.as_deref(), &path, is_form);
        (kind, phase, resp)
    });
    if let Some((kind, FaultPhase::Before, resp)) = fault {
        return finish(&state, service, operation, method, path, kind, resp);
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
    if let Some((kind, FaultPhase::After, fault_resp)) = fault {
        // moto's answer (already complete: its status is in) is lost.
        drop(resp);
        return finish(&state, service, operation, method, path, kind, fault_resp);
    }

    state.log.push(RequestRecord {
        service,
        operation,
        method,
        path,
        status: resp.status().as_u16(),
    });
    Ok(resp)
}

/// Logs a faulted request (status 0: dropped) and answers it, or drops it.
fn finish(
    state: &State,
    service: Option<String>,
    operation: Option<String>,
    method: String,
    path: String,
    kind: FaultKind,
    resp: Option<Response<Body>>,
) -> Result<Response<Body>, Dropped> {
    state.log.push(RequestRecord {
        service,
        operation,
        method,
        path,
        status: resp.as_ref().map_or(0, |r| r.status().as_u16()),
    });
    debug_assert_eq!(resp.is_none(), kind == FaultKind::Drop);
    resp.ok_or(Dropped)
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
