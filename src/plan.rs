//! The one plan type shared by `plan`, `up`, `down` and status: what would
//! change, where, and why. Rendering lives in `output.rs`.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Create,
    Update,
    Replace,
    Delete,
}

impl Action {
    pub fn marker(self) -> &'static str {
        match self {
            Action::Create => "+",
            Action::Update => "~",
            Action::Replace => "-/+",
            Action::Delete => "-",
        }
    }

    /// Past tense for reports of what `up`/`down` did.
    pub fn done(self) -> &'static str {
        match self {
            Action::Create => "created",
            Action::Update => "updated",
            Action::Replace => "replaced",
            Action::Delete => "deleted",
        }
    }
}

/// A value in a plan. The variant decides how it is shown, never the caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum Value {
    Known(String),
    Sensitive,
    KnownAfterApply,
}

impl Value {
    pub fn known(v: impl Into<String>) -> Self {
        Value::Known(v.into())
    }

    pub fn as_known(&self) -> Option<&str> {
        match self {
            Value::Known(v) => Some(v),
            _ => None,
        }
    }
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Known(v) => write!(f, "{v:?}"),
            Value::Sensitive => f.write_str("(sensitive)"),
            Value::KnownAfterApply => f.write_str("(known after apply)"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldChange {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old: Option<Value>,
    pub new: Value,
}

/// One planned change. `reason` only explains it to the user: apply never
/// branches on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    pub address: String,
    pub action: Action,
    pub reason: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldChange>,
}

impl Change {
    pub fn new(address: impl Into<String>, action: Action, reason: impl Into<String>) -> Self {
        Change {
            address: address.into(),
            action,
            reason: reason.into(),
            fields: Vec::new(),
        }
    }

    pub fn field(mut self, name: &str, old: Option<Value>, new: Value) -> Self {
        self.fields.push(FieldChange {
            name: name.to_string(),
            old,
            new,
        });
        self
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub create: usize,
    pub update: usize,
    pub replace: usize,
    pub delete: usize,
}

pub fn count(changes: &[Change]) -> Counts {
    let mut c = Counts::default();
    for ch in changes {
        match ch.action {
            Action::Create => c.create += 1,
            Action::Update => c.update += 1,
            Action::Replace => c.replace += 1,
            Action::Delete => c.delete += 1,
        }
    }
    c
}
