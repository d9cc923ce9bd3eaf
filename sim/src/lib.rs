//! A test-only IAM Roles Anywhere simulator — never linked into edgectl.
//!
//! moto, our AWS stand-in, has no Roles Anywhere (specs/moto.md). This
//! server speaks its REST-JSON control plane (trust anchors, profiles,
//! tags) and CreateSession with real SigV4-X509 verification
//! (specs/rolesanywhere.md), and forwards every other request to moto, so an
//! SDK — or AWS's own signing helper — can use it as its one endpoint URL.
//!
//! Where it knowingly differs from AWS:
//! - `enabled` omitted on CreateTrustAnchor/CreateProfile means disabled
//!   (AWS leaves the default undocumented; edgectl always sends it).
//! - Error messages AWS does not document ("Profile is disabled", ...) are
//!   our own wording; "Untrusted Signing Certificate" is AWS's.
//! - CreateSession credentials are random (moto accepts any); the role's
//!   `MaxSessionDuration`, session policies, managed policies and CRLs are
//!   not applied; `AWS4-X509-MLDSA` signatures are not supported.
//! - Subjects, CRLs, notification-settings and attribute-mapping operations
//!   answer `UnknownOperationException`.
//!
//! ```no_run
//! # async fn f(moto_url: String) -> anyhow::Result<()> {
//! let sim = rolesanywhere_sim::start("127.0.0.1:0".parse()?, moto_url).await?;
//! // point the SDK (endpoint_url) or `aws_signing_helper --endpoint` at sim.url
//! let writes = sim.requests().iter().filter(|r| r.is_write()).count();
//! # Ok(()) }
//! ```

mod arn;
pub mod chain;
mod classify;
mod control_plane;
pub mod faults;
mod ids;
mod proxy;
pub mod query;
mod request_log;
mod response;
mod server;
mod session;
pub mod sigv4x509;
pub mod trust_policy;
mod upstream;

#[cfg(test)]
#[path = "../tests/common/signer.rs"]
mod test_signer;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use faults::{FaultKind, FaultPhase, FaultPlan, InjectedFault};
pub use request_log::RequestRecord;
pub use response::ApiError;

/// The account every resource belongs to: moto's fixed account.
pub const ACCOUNT: &str = "123456789012";

/// Behaviour switches (the defaults are AWS's).
#[derive(Debug, Clone)]
pub struct Options {
    /// How far X-Amz-Date may be from our clock; AWS allows 5 minutes.
    /// `None` disables the check (for replaying recorded requests).
    pub max_clock_skew: Option<Duration>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_clock_skew: Some(Duration::from_secs(300)),
        }
    }
}

/// Shared by every connection.
pub(crate) struct State {
    pub(crate) upstream: upstream::Upstream,
    pub(crate) store: Mutex<control_plane::store::Store>,
    pub(crate) log: request_log::RequestLog,
    pub(crate) options: Options,
    /// Fault injection: requests whose `action()` is listed here wait until
    /// it is removed (tests kill a client mid-flight this way).
    pub(crate) holds: tokio::sync::watch::Sender<Vec<String>>,
    pub(crate) held: std::sync::atomic::AtomicUsize,
    /// Fault injection at a rate, and freezing after N requests.
    pub(crate) faults: faults::Faults,
}

/// A running simulator; dropping it (or `shutdown`) stops the server and
/// every open connection.
pub struct SimHandle {
    /// `http://127.0.0.1:PORT`: the endpoint URL for SDKs and the helper.
    pub url: String,
    pub addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl SimHandle {
    /// Every request so far (except the simulator's own `/__sim/` ones), oldest first.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.state.log.snapshot()
    }

    /// Forgets the requests logged so far.
    pub fn reset_requests(&self) {
        self.state.log.reset()
    }

    /// Holds every request for `action` (e.g. `acm-pca:GetCertificateAuthorityCsr`)
    /// until [`SimHandle::release`]; the request then goes on as usual.
    pub fn hold(&self, action: &str) {
        self.state.holds.send_modify(|h| h.push(action.to_string()));
    }

    pub fn release(&self, action: &str) {
        self.state.holds.send_modify(|h| h.retain(|a| a != action));
    }

    /// How many requests are waiting in a hold right now.
    pub fn held(&self) -> usize {
        self.state.held.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Fails requests from now on as `plan` says (see [`faults`]); replaces
    /// any earlier plan.
    pub fn inject_faults(&self, plan: FaultPlan) {
        self.state.faults.set(Some(plan));
    }

    /// Stops injecting faults (the record of injected ones stays).
    pub fn clear_faults(&self) {
        self.state.faults.set(None);
    }

    /// Every fault injected since start (or [`SimHandle::reset_fault_counters`]).
    pub fn injected_faults(&self) -> Vec<InjectedFault> {
        self.state.faults.injected()
    }

    /// How many requests were SDK retries (`amz-sdk-request: attempt=N`, N > 1).
    pub fn retries_seen(&self) -> usize {
        self.state
            .faults
            .retries
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Forgets injected faults and the retry count.
    pub fn reset_fault_counters(&self) {
        self.state.faults.reset_counters()
    }

    /// API requests seen so far (every one, faulted or held too; not `/__sim/`).
    pub fn seen(&self) -> usize {
        self.state.faults.seen.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Lets the next `n` requests through, then holds every later one
    /// (before it is forwarded) until [`SimHandle::unfreeze`]; [`SimHandle::held`]
    /// counts them. A test kills its client once `held() > 0`: exactly the
    /// first `n` requests (from now) can have taken effect.
    pub fn freeze_after(&self, n: usize) {
        let at = (self.seen() + n) as u64;
        self.state
            .faults
            .freeze_at
            .store(at, std::sync::atomic::Ordering::SeqCst);
        self.state.holds.send_modify(|_| {});
    }

    pub fn unfreeze(&self) {
        self.state
            .faults
            .freeze_at
            .store(u64::MAX, std::sync::atomic::Ordering::SeqCst);
        // Wake the held requests so they re-check.
        self.state.holds.send_modify(|_| {});
    }

    /// Drops every request held right now (by the freeze, or by
    /// [`SimHandle::hold`] once released) without forwarding it (connection
    /// closed, logged with status 0), and every later one past the freeze
    /// point until [`SimHandle::resume`]: for a test that killed the client,
    /// so nothing past the Nth request ever reaches moto, not even a request
    /// the client sent before dying that is read only now.
    pub fn unfreeze_discarding(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        self.state.faults.discarding.store(true, SeqCst);
        self.state.faults.discard_generation.fetch_add(1, SeqCst);
        self.state.holds.send_modify(|_| {});
    }

    /// Ends [`SimHandle::unfreeze_discarding`]: requests go through again.
    pub fn resume(&self) {
        self.state
            .faults
            .discarding
            .store(false, std::sync::atomic::Ordering::SeqCst);
        self.unfreeze();
    }

    /// Stops serving (same as dropping the handle).
    pub fn shutdown(self) {}
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds `listen` (use port 0 for a free one) and serves on a tokio task,
/// forwarding non-Roles-Anywhere requests to `upstream` (moto's URL).
pub async fn start(listen: SocketAddr, upstream: String) -> anyhow::Result<SimHandle> {
    start_with(listen, upstream, Options::default()).await
}

/// `start` with non-default options.
pub async fn start_with(listen: SocketAddr, upstream: String, options: Options) -> anyhow::Result<SimHandle> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    let state = Arc::new(State {
        upstream: upstream::Upstream::new(upstream),
        store: Mutex::default(),
        log: request_log::RequestLog::default(),
        options,
        holds: tokio::sync::watch::channel(Vec::new()).0,
        held: Default::default(),
        faults: Default::default(),
    });
    let task = tokio::spawn(server::serve(listener, state.clone()));
    Ok(SimHandle {
        url: format!("http://{addr}"),
        addr,
        state,
        task,
    })
}
