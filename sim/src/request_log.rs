//! Every request that reached the simulator, for tests that must prove what
//! edgectl did (or did not) call — e.g. "a second `up` makes no write call".

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// One request and the status it got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// The SigV4 signing name from the credential scope (`ssm`, `iam`, `sts`,
    /// `acm-pca`, `rolesanywhere`, ...); `None` for an unsigned request.
    pub service: Option<String>,
    /// The operation: from `X-Amz-Target` (`AmazonSSM.PutParameter` →
    /// `PutParameter`), a query-protocol `Action=`, or the Roles Anywhere
    /// REST route; `None` when none of these names it (e.g. a REST call to
    /// another service).
    pub operation: Option<String>,
    pub method: String,
    /// Path without the query string.
    pub path: String,
    pub status: u16,
}

/// Verbs of AWS operations that only read. `Admin` is Cognito's prefix for
/// the administrator's variants (`AdminGetUser`).
const READ_PREFIXES: &[&str] = &[
    "Get", "List", "Describe", "Head", "Search", "Lookup", "BatchGet", "Scan", "Query",
];

impl RequestRecord {
    /// Whether this call may have changed state somewhere.
    ///
    /// Rule: an operation whose name (after an optional `Admin` prefix)
    /// starts with Get, List, Describe, Head, Search, Lookup, BatchGet, Scan
    /// or Query is a read — this covers `GetCallerIdentity`,
    /// `GetParametersByPath`, `DescribeInstances`, `GetRole`. Every other
    /// named operation is a write, including `CreateSession` (it mints
    /// credentials) and `AssumeRole`. Without an operation name, the HTTP
    /// method decides: GET, HEAD and OPTIONS read, anything else writes.
    pub fn is_write(&self) -> bool {
        match &self.operation {
            Some(op) => {
                let op = op.strip_prefix("Admin").unwrap_or(op);
                !READ_PREFIXES.iter().any(|p| op.starts_with(p))
            }
            None => !matches!(self.method.as_str(), "GET" | "HEAD" | "OPTIONS"),
        }
    }

    /// `service:Operation` (e.g. `ssm:PutParameter`), for readable assertions.
    pub fn action(&self) -> String {
        format!(
            "{}:{}",
            self.service.as_deref().unwrap_or("?"),
            self.operation
                .clone()
                .unwrap_or_else(|| format!("{} {}", self.method, self.path))
        )
    }
}

/// The shared, append-only (until reset) log.
#[derive(Clone, Default)]
pub(crate) struct RequestLog(Arc<Mutex<Vec<RequestRecord>>>);

impl RequestLog {
    pub(crate) fn push(&self, record: RequestRecord) {
        self.0.lock().expect("request log lock").push(record);
    }
    pub(crate) fn snapshot(&self) -> Vec<RequestRecord> {
        self.0.lock().expect("request log lock").clone()
    }
    pub(crate) fn reset(&self) {
        self.0.lock().expect("request log lock").clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(op: Option<&str>, method: &str) -> RequestRecord {
        RequestRecord {
            service: Some("x".into()),
            operation: op.map(str::to_string),
            method: method.into(),
            path: "/".into(),
            status: 200,
        }
    }

    #[test]
    fn reads_and_writes() {
        for read in [
            "GetCallerIdentity",
            "GetParametersByPath",
            "ListTrustAnchors",
            "DescribeInstances",
            "AdminGetUser",
            "GetRole",
        ] {
            assert!(!rec(Some(read), "POST").is_write(), "{read}");
        }
        for write in [
            "PutParameter",
            "CreateTrustAnchor",
            "TagResource",
            "CreateSession",
            "AdminCreateUser",
            "DeleteProfile",
            "EnableProfile",
            "IssueCertificate",
        ] {
            assert!(rec(Some(write), "GET").is_write(), "{write}");
        }
        assert!(!rec(None, "GET").is_write());
        assert!(!rec(None, "HEAD").is_write());
        assert!(rec(None, "PUT").is_write());
        assert!(rec(None, "POST").is_write());
    }
}
