//! ARNs: `arn:<partition>:<service>:<region>:<account>:<resource>`.

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Arn {
    pub partition: String,
    pub service: String,
    pub region: String,
    pub account: String,
    pub resource: String,
}

impl Arn {
    pub(crate) fn parse(s: &str) -> Option<Arn> {
        let mut parts = s.splitn(6, ':');
        if parts.next()? != "arn" {
            return None;
        }
        let arn = Arn {
            partition: parts.next()?.to_string(),
            service: parts.next()?.to_string(),
            region: parts.next()?.to_string(),
            account: parts.next()?.to_string(),
            resource: parts.next()?.to_string(),
        };
        (!arn.partition.is_empty() && !arn.service.is_empty() && !arn.resource.is_empty()).then_some(arn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let a = Arn::parse("arn:aws:iam::123456789012:role/path/edge").unwrap();
        assert_eq!((a.service.as_str(), a.region.as_str()), ("iam", ""));
        assert_eq!(a.resource, "role/path/edge");
        assert!(Arn::parse("nope:aws:iam::1:role/x").is_none());
        assert!(Arn::parse("arn:aws:iam").is_none());
    }
}
