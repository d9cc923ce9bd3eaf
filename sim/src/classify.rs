//! What AWS call a request is: its service and region (the SigV4
//! credential scope) and its operation name.

use hyper::HeaderMap;

use crate::query;

/// `Credential=<id>/<yyyymmdd>/<region>/<service>/aws4_request` → (region,
/// service). Works for SigV4 (`AWS4-HMAC-SHA256`) and SigV4-X509 alike, and
/// for presigned URLs (`X-Amz-Credential`).
pub(crate) fn credential_scope(headers: &HeaderMap, query: &[(String, String)]) -> Option<(String, String)> {
    let from_header = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|auth| {
            let start = auth.find("Credential=")? + "Credential=".len();
            let rest = &auth[start..];
            let end = rest.find([',', ' ']).unwrap_or(rest.len());
            Some(rest[..end].to_string())
        });
    let credential = from_header.or_else(|| query::get(query, "X-Amz-Credential").map(str::to_string))?;
    let parts: Vec<&str> = credential.split('/').collect();
    match parts.as_slice() {
        [.., _date, region, service, "aws4_request"] => Some((region.to_string(), service.to_string())),
        _ => None,
    }
}

/// The operation named by the request itself (`X-Amz-Target`, a query
/// protocol `Action`, or a Smithy RPCv2 path); REST routes are named by
/// their handlers instead.
pub(crate) fn operation(
    headers: &HeaderMap,
    path: &str,
    query: &[(String, String)],
    body: &[u8],
) -> Option<String> {
    if let Some(target) = headers.get("x-amz-target").and_then(|v| v.to_str().ok()) {
        // `AmazonSSM.PutParameter`, `ACMPrivateCA.IssueCertificate`.
        return Some(target.rsplit('.').next().unwrap_or(target).to_string());
    }
    if let Some(action) = query::get(query, "Action") {
        return Some(action.to_string());
    }
    let is_form = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/x-www-form-urlencoded"));
    if is_form {
        if let Ok(body) = std::str::from_utf8(body) {
            if let Some(action) = query::get(&query::parse(body), "Action") {
                return Some(action.to_string());
            }
        }
    }
    // Smithy RPCv2 CBOR: /service/<ServiceName>/operation/<Operation>
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    if let ["service", _, "operation", op] = segments.as_slice() {
        return Some(op.to_string());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn scope_from_sigv4_and_x509_headers() {
        let h = headers(&[(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=testing/20260101/eu-west-1/ssm/aws4_request, SignedHeaders=host, Signature=00",
        )]);
        assert_eq!(
            credential_scope(&h, &[]),
            Some(("eu-west-1".into(), "ssm".into()))
        );
        let h = headers(&[(
            "authorization",
            "AWS4-X509-RSA-SHA256 Credential=1234/20260101/eu-west-1/rolesanywhere/aws4_request, SignedHeaders=host, Signature=00",
        )]);
        assert_eq!(
            credential_scope(&h, &[]),
            Some(("eu-west-1".into(), "rolesanywhere".into()))
        );
        assert_eq!(credential_scope(&HeaderMap::new(), &[]), None);
    }

    #[test]
    fn operation_from_target_form_and_query() {
        let h = headers(&[("x-amz-target", "AmazonSSM.PutParameter")]);
        assert_eq!(operation(&h, "/", &[], b""), Some("PutParameter".into()));
        let h = headers(&[("content-type", "application/x-www-form-urlencoded; charset=utf-8")]);
        assert_eq!(
            operation(&h, "/", &[], b"Action=GetRole&Version=2010-05-08&RoleName=r"),
            Some("GetRole".into())
        );
        let q = query::parse("Action=DescribeInstances");
        assert_eq!(
            operation(&HeaderMap::new(), "/", &q, b""),
            Some("DescribeInstances".into())
        );
        assert_eq!(
            operation(
                &HeaderMap::new(),
                "/service/GraniteServiceVersion20100801/operation/PutMetricData",
                &[],
                b""
            ),
            Some("PutMetricData".into())
        );
        assert_eq!(operation(&HeaderMap::new(), "/topics/x", &[], b"{}"), None);
    }
}
