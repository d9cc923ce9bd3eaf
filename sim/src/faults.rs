//! Fault injection at a set rate, and "freeze after N requests".
//!
//! A [`FaultPlan`] makes a seeded share of API requests fail the way AWS
//! fails under load: throttling (400 with the protocol's own error shape),
//! 429 `TooManyRequestsException`, 503 with an empty body, or a connection
//! closed without an answer. `Before` faults answer without forwarding (the
//! call never reached moto); `After` faults forward first and then lose
//! moto's answer (the call took effect but the caller cannot know: the case
//! idempotency tokens exist for).
//!
//! Decisions come from a seeded generator in arrival order, so a test's
//! sequence of faults is reproducible up to the client's own concurrency.
//!
//! The error shapes are what the AWS SDKs parse (and AWS sends):
//! - awsJson1.0/1.1 (`X-Amz-Target`: SSM, ACM PCA, Cognito, ECR, ...) and
//!   restJson1 (Roles Anywhere): `x-amzn-ErrorType` header plus
//!   `{"__type": code, "message": ...}`;
//! - awsQuery (IAM, STS, ELBv2): `<ErrorResponse><Error><Type>Sender</Type>
//!   <Code>Throttling</Code>...`;
//! - ec2Query: `<Response><Errors><Error><Code>RequestLimitExceeded</Code>...`
//!   (EC2's throttling code);
//! - Smithy RPCv2 CBOR: we do not encode CBOR errors, so a throttle becomes
//!   a 503 with an empty body there (recorded as such).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use hyper::{HeaderMap, Response};
use serde::Serialize;

use crate::response::{full, Body};

/// How one faulted request fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum FaultKind {
    /// 400 with the protocol's throttling code (`ThrottlingException`,
    /// `Throttling`, EC2's `RequestLimitExceeded`).
    Throttle,
    /// 429 `TooManyRequestsException`.
    TooManyRequests,
    /// 503 with an empty body.
    Unavailable,
    /// The request is read, then the connection is closed without an answer.
    Drop,
}

/// When a fault happens relative to forwarding (or handling) the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum FaultPhase {
    /// Instead of forwarding: the call never took effect.
    Before,
    /// After forwarding: the call took effect, its answer is replaced.
    After,
}

/// Which requests fail, how, and how often.
#[derive(Debug, Clone)]
pub struct FaultPlan {
    pub seed: u64,
    /// Share of requests (0.0–1.0) that fail.
    pub rate: f64,
    /// Picked uniformly per fault.
    pub kinds: Vec<FaultKind>,
    /// Picked uniformly per fault.
    pub phases: Vec<FaultPhase>,
    /// At most this many faults per SDK invocation (`amz-sdk-invocation-id`,
    /// the same across the SDK's retries of one call): `Some(2)` with the
    /// SDK's default of 3 attempts means every call eventually succeeds.
    /// `None`: no limit.
    pub max_per_invocation: Option<u32>,
}

/// One injected fault, for a test's report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InjectedFault {
    /// `service:Operation`, as in [`crate::RequestRecord::action`].
    pub action: String,
    pub kind: FaultKind,
    pub phase: FaultPhase,
    /// The SDK's attempt number (`amz-sdk-request: attempt=N`), when sent.
    pub attempt: Option<u32>,
}

/// splitmix64: small, seedable, good enough for picking faults.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[(self.next() % items.len() as u64) as usize]
    }
}

struct Active {
    plan: FaultPlan,
    rng: Rng,
    per_invocation: std::collections::HashMap<String, u32>,
}

/// Shared fault state (part of `State`).
pub(crate) struct Faults {
    active: Mutex<Option<Active>>,
    injected: Mutex<Vec<InjectedFault>>,
    /// API requests seen (not `/__sim/`), including faulted and held ones.
    pub(crate) seen: AtomicUsize,
    /// Requests that said they were an SDK retry (`attempt` > 1).
    pub(crate) retries: AtomicUsize,
    /// Requests numbered (0-based, by `seen`) at or past this wait until
    /// [`crate::SimHandle::unfreeze`]; `u64::MAX`: off.
    pub(crate) freeze_at: AtomicU64,
    /// Bumped by `unfreeze_discarding`: requests held across a bump are
    /// dropped instead of going on.
    pub(crate) discard_generation: AtomicU64,
    /// Set by `unfreeze_discarding` until `resume`: requests past the freeze
    /// point are dropped at once, including ones a killed client had sent
    /// that are read only now.
    pub(crate) discarding: std::sync::atomic::AtomicBool,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            active: Mutex::default(),
            injected: Mutex::default(),
            seen: AtomicUsize::new(0),
            retries: AtomicUsize::new(0),
            freeze_at: AtomicU64::new(u64::MAX),
            discard_generation: AtomicU64::new(0),
            discarding: Default::default(),
        }
    }
}

/// `amz-sdk-request: attempt=2; max=3` → 2.
pub(crate) fn attempt(headers: &HeaderMap) -> Option<u32> {
    let v = headers.get("amz-sdk-request")?.to_str().ok()?;
    v.split(';')
        .find_map(|p| p.trim().strip_prefix("attempt="))
        .and_then(|n| n.trim().parse().ok())
}

impl Faults {
    pub(crate) fn set(&self, plan: Option<FaultPlan>) {
        *self.active.lock().expect("fault lock") = plan.map(|plan| {
            assert!(
                !plan.kinds.is_empty() && !plan.phases.is_empty(),
                "a fault plan needs kinds and phases"
            );
            Active {
                rng: Rng(plan.seed),
                plan,
                per_invocation: Default::default(),
            }
        });
    }

    pub(crate) fn injected(&self) -> Vec<InjectedFault> {
        self.injected.lock().expect("fault lock").clone()
    }

    pub(crate) fn reset_counters(&self) {
        self.injected.lock().expect("fault lock").clear();
        self.retries.store(0, Ordering::SeqCst);
    }

    /// Whether (and how) this request fails; records the decision.
    pub(crate) fn decide(&self, action: &str, headers: &HeaderMap) -> Option<(FaultKind, FaultPhase)> {
        let attempt = attempt(headers);
        if attempt.is_some_and(|a| a > 1) {
            self.retries.fetch_add(1, Ordering::SeqCst);
        }
        let mut guard = self.active.lock().expect("fault lock");
        let active = guard.as_mut()?;
        // Always draw, so the sequence of decisions depends on arrival order only.
        let roll = active.rng.unit();
        let kind = active.rng.pick(&active.plan.kinds);
        let phase = active.rng.pick(&active.plan.phases);
        if roll >= active.plan.rate {
            return None;
        }
        if let Some(max) = active.plan.max_per_invocation {
            let id = headers
                .get("amz-sdk-invocation-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            if !id.is_empty() {
                let n = active.per_invocation.entry(id).or_default();
                if *n >= max {
                    return None;
                }
                *n += 1;
            }
        }
        self.injected.lock().expect("fault lock").push(InjectedFault {
            action: action.to_string(),
            kind,
            phase,
            attempt,
        });
        Some((kind, phase))
    }
}

/// The wire protocol of a request, for the shape of its error.
enum Protocol {
    Json { content_type: String },
    Query,
    Ec2,
    Cbor,
}

fn protocol(headers: &HeaderMap, service: Option<&str>, path: &str, is_form: bool) -> Protocol {
    if headers.contains_key("x-amz-target") {
        let content_type = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/x-amz-json-1.1")
            .to_string();
        return Protocol::Json { content_type };
    }
    if path.starts_with("/service/") && path.contains("/operation/") {
        return Protocol::Cbor;
    }
    if is_form {
        return if service == Some("ec2") {
            Protocol::Ec2
        } else {
            Protocol::Query
        };
    }
    Protocol::Json {
        content_type: "application/json".into(),
    }
}

/// The response for a fault of `kind` (`Drop` has none: the caller closes
/// the connection). A throttle on a CBOR request becomes `Unavailable`.
pub(crate) fn response(
    kind: FaultKind,
    headers: &HeaderMap,
    service: Option<&str>,
    path: &str,
    is_form: bool,
) -> (FaultKind, Option<Response<Body>>) {
    let proto = protocol(headers, service, path, is_form);
    let (status, code) = match (kind, &proto) {
        (FaultKind::Drop, _) => return (kind, None),
        (FaultKind::Unavailable, _) | (_, Protocol::Cbor) => {
            let resp = Response::builder()
                .status(503)
                .header("x-amzn-requestid", crate::ids::uuid_v4())
                .body(full(""))
                .expect("static response");
            return (FaultKind::Unavailable, Some(resp));
        }
        (FaultKind::Throttle, Protocol::Ec2) => (400, "RequestLimitExceeded"),
        (FaultKind::Throttle, Protocol::Query) => (400, "Throttling"),
        (FaultKind::Throttle, Protocol::Json { .. }) => (400, "ThrottlingException"),
        (FaultKind::TooManyRequests, _) => (429, "TooManyRequestsException"),
    };
    let request_id = crate::ids::uuid_v4();
    let message = "Rate exceeded";
    let builder = Response::builder()
        .status(status)
        .header("x-amzn-requestid", &request_id);
    let resp = match proto {
        Protocol::Json { content_type } => builder
            .header("content-type", content_type)
            .header("x-amzn-errortype", code)
            .body(full(
                serde_json::json!({ "__type": code, "message": message }).to_string(),
            )),
        Protocol::Query => builder.header("content-type", "text/xml").body(full(format!(
            "<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error><RequestId>{request_id}</RequestId></ErrorResponse>"
        ))),
        Protocol::Ec2 => builder.header("content-type", "text/xml;charset=UTF-8").body(full(format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error></Errors><RequestID>{request_id}</RequestID></Response>"
        ))),
        Protocol::Cbor => unreachable!("answered above"),
    };
    (kind, Some(resp.expect("static headers are valid")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempt_header() {
        let mut h = HeaderMap::new();
        assert_eq!(attempt(&h), None);
        h.insert("amz-sdk-request", "attempt=2; max=3".parse().unwrap());
        assert_eq!(attempt(&h), Some(2));
    }

    #[test]
    fn rate_is_roughly_kept_and_reproducible() {
        let plan = FaultPlan {
            seed: 7,
            rate: 0.25,
            kinds: vec![FaultKind::Throttle, FaultKind::Drop],
            phases: vec![FaultPhase::Before],
            max_per_invocation: None,
        };
        let run = || {
            let f = Faults::default();
            f.set(Some(plan.clone()));
            (0..1000)
                .map(|_| f.decide("x:Y", &HeaderMap::new()).is_some())
                .collect::<Vec<_>>()
        };
        let a = run();
        assert_eq!(a, run());
        let n = a.iter().filter(|x| **x).count();
        assert!((200..300).contains(&n), "{n}");
    }

    #[test]
    fn per_invocation_limit() {
        let f = Faults::default();
        f.set(Some(FaultPlan {
            seed: 1,
            rate: 1.0,
            kinds: vec![FaultKind::Unavailable],
            phases: vec![FaultPhase::Before],
            max_per_invocation: Some(2),
        }));
        let mut h = HeaderMap::new();
        h.insert("amz-sdk-invocation-id", "abc".parse().unwrap());
        let got: Vec<_> = (0..3).map(|_| f.decide("x:Y", &h).is_some()).collect();
        assert_eq!(got, [true, true, false]);
    }
}
