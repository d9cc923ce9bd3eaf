//! Input validation with the service model's constraints, reported the way
//! AWS's Coral services do: "N validation error(s) detected: Value 'x' at
//! 'field' failed to satisfy constraint: Member must …".

use serde_json::Value;

use crate::response::ApiError;

pub(crate) const NAME_PATTERN: &str = "[ a-zA-Z0-9-_]*";
pub(crate) const TAG_PATTERN: &str = "[ a-zA-Z0-9_.:/=+@-]*";
pub(crate) const ROLE_ARN_PATTERN: &str = "arn:aws(-[^:]+)?:iam(:.*){2}(:role.*)";
pub(crate) const ID_PATTERN: &str = "[a-f0-9]{8}-([a-z0-9]{4}-){3}[a-z0-9]{12}";

/// A pattern: its text for the message, and the check that implements it.
pub(crate) type Pattern<'a> = (&'a str, fn(&str) -> bool);

/// Collects constraint violations; `finish` turns them into one error.
#[derive(Default)]
pub(crate) struct Validator {
    errors: Vec<String>,
}

impl Validator {
    pub(crate) fn fail(&mut self, value: Option<&str>, field: &str, constraint: impl AsRef<str>) {
        let value = match value {
            Some(v) => format!("'{v}'"),
            None => "null".to_string(),
        };
        self.errors.push(format!(
            "Value {value} at '{field}' failed to satisfy constraint: Member must {}",
            constraint.as_ref()
        ));
    }

    pub(crate) fn finish(self) -> Result<(), ApiError> {
        match self.errors.len() {
            0 => Ok(()),
            1 => Err(ApiError::validation(format!(
                "1 validation error detected: {}",
                self.errors[0]
            ))),
            n => Err(ApiError::validation(format!(
                "{n} validation errors detected: {}",
                self.errors.join("; ")
            ))),
        }
    }

    /// A required member `key` of `body`, reported as `field`.
    pub(crate) fn required<'a>(&mut self, body: &'a Value, key: &str, field: &str) -> Option<&'a Value> {
        match body.get(key) {
            None | Some(Value::Null) => {
                self.fail(None, field, "not be null");
                None
            }
            Some(v) => Some(v),
        }
    }

    /// A string of `min..=max` characters matching `allowed` (described by `pattern`).
    pub(crate) fn string(
        &mut self,
        value: &Value,
        field: &str,
        min: usize,
        max: usize,
        pattern: Option<Pattern>,
    ) -> Option<String> {
        let Some(s) = value.as_str() else {
            self.fail(Some(&value.to_string()), field, "be a string");
            return None;
        };
        let len = s.chars().count();
        let before = self.errors.len();
        if len < min {
            self.fail(
                Some(s),
                field,
                format!("have length greater than or equal to {min}"),
            );
        }
        if len > max {
            self.fail(Some(s), field, format!("have length less than or equal to {max}"));
        }
        if let Some((desc, ok)) = pattern {
            if !ok(s) {
                self.fail(
                    Some(s),
                    field,
                    format!("satisfy regular expression pattern: {desc}"),
                );
            }
        }
        (self.errors.len() == before).then(|| s.to_string())
    }

    pub(crate) fn boolean(&mut self, value: &Value, field: &str) -> Option<bool> {
        let b = value.as_bool();
        if b.is_none() {
            self.fail(Some(&value.to_string()), field, "be a boolean");
        }
        b
    }

    pub(crate) fn integer(&mut self, value: &Value, field: &str, min: i64, max: i64) -> Option<i64> {
        let Some(n) = value.as_i64() else {
            self.fail(Some(&value.to_string()), field, "be an integer");
            return None;
        };
        if n < min {
            self.fail(
                Some(&n.to_string()),
                field,
                format!("have value greater than or equal to {min}"),
            );
            return None;
        }
        if n > max {
            self.fail(
                Some(&n.to_string()),
                field,
                format!("have value less than or equal to {max}"),
            );
            return None;
        }
        Some(n)
    }

    pub(crate) fn one_of(&mut self, value: &Value, field: &str, allowed: &[&str]) -> Option<String> {
        match value.as_str() {
            Some(s) if allowed.contains(&s) => Some(s.to_string()),
            other => {
                self.fail(
                    Some(
                        other
                            .map(str::to_string)
                            .unwrap_or_else(|| value.to_string())
                            .as_str(),
                    ),
                    field,
                    format!("satisfy enum value set: [{}]", allowed.join(", ")),
                );
                None
            }
        }
    }

    /// A list of at most `max` items.
    pub(crate) fn list<'a>(&mut self, value: &'a Value, field: &str, max: usize) -> Option<&'a Vec<Value>> {
        let Some(items) = value.as_array() else {
            self.fail(Some(&value.to_string()), field, "be a list");
            return None;
        };
        if items.len() > max {
            self.fail(
                Some(&value.to_string()),
                field,
                format!("have length less than or equal to {max}"),
            );
            return None;
        }
        Some(items)
    }
}

pub(crate) fn is_name(s: &str) -> bool {
    s.chars()
        .all(|c| c == ' ' || c == '-' || c == '_' || c.is_ascii_alphanumeric())
}

pub(crate) fn is_tag_text(s: &str) -> bool {
    s.chars()
        .all(|c| c.is_ascii_alphanumeric() || " _.:/=+@-".contains(c))
}

/// `arn:aws(-[^:]+)?:iam(:.*){2}(:role.*)`, anchored as the service matches it.
pub(crate) fn is_role_arn(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("arn:aws") else {
        return false;
    };
    let rest = match rest.strip_prefix('-') {
        Some(r) => match r.find(':') {
            Some(i) if i > 0 => &r[i..],
            _ => return false,
        },
        None => rest,
    };
    let Some(rest) = rest.strip_prefix(":iam") else {
        return false;
    };
    // Some ":role" must follow a prefix of the form ":x:y" (two colons at least).
    rest.match_indices(":role").any(|(i, _)| {
        let prefix = &rest[..i];
        prefix.starts_with(':') && prefix.matches(':').count() >= 2
    })
}

pub(crate) fn is_id(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            0..=7 => c.is_ascii_digit() || (b'a'..=b'f').contains(&c),
            _ => c.is_ascii_digit() || c.is_ascii_lowercase(),
        })
}

/// A `{"key","value"}` tag list (create calls and TagResource).
pub(crate) fn tags(v: &mut Validator, value: &Value, field: &str) -> Option<Vec<(String, String)>> {
    let items = v.list(value, field, 200)?;
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let key_field = format!("{field}.{}.member.key", i + 1);
        let value_field = format!("{field}.{}.member.value", i + 1);
        let key = v
            .required(item, "key", &key_field)
            .and_then(|k| v.string(k, &key_field, 1, 128, Some((TAG_PATTERN, is_tag_text))));
        let val = v
            .required(item, "value", &value_field)
            .and_then(|x| v.string(x, &value_field, 0, 256, Some((TAG_PATTERN, is_tag_text))));
        if let Some(k) = &key {
            if k.to_ascii_lowercase().starts_with("aws:") {
                v.fail(Some(k), &key_field, "not begin with the reserved prefix aws:");
            }
        }
        if let (Some(k), Some(x)) = (key, val) {
            out.push((k, x));
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_arn_pattern() {
        assert!(is_role_arn("arn:aws:iam::123456789012:role/edge"));
        assert!(is_role_arn("arn:aws-cn:iam::123456789012:role/path/edge"));
        assert!(!is_role_arn("arn:aws:iam::123456789012:user/edge"));
        assert!(!is_role_arn("arn:aws:s3:::bucket:role"));
        assert!(!is_role_arn("role/edge"));
    }

    #[test]
    fn ids_and_names() {
        assert!(is_id("0b0f9b0c-1f2e-4d3c-8b4a-5e6f7a8b9c0d"));
        assert!(!is_id("0B0F9B0C-1f2e-4d3c-8b4a-5e6f7a8b9c0d"));
        assert!(!is_id("not-an-id"));
        assert!(is_name("edge fleet-1_a"));
        assert!(!is_name("edge/fleet"));
    }

    #[test]
    fn messages_look_like_aws() {
        let mut v = Validator::default();
        v.string(&Value::from("a/b"), "name", 1, 255, Some((NAME_PATTERN, is_name)));
        let e = v.finish().unwrap_err();
        assert_eq!(e.kind, "ValidationException");
        assert_eq!(
            e.message,
            "1 validation error detected: Value 'a/b' at 'name' failed to satisfy constraint: \
             Member must satisfy regular expression pattern: [ a-zA-Z0-9-_]*"
        );
    }
}
