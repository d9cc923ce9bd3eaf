//! Error classes and exit codes. A user error (bad input, missing
//! prerequisite) carries a hint; anything else is unexpected.

use std::fmt;

/// A problem the user can fix, with the next step to take.
#[derive(Debug)]
pub struct User {
    pub message: String,
    pub hint: Option<String>,
}

impl User {
    pub fn new(message: impl Into<String>, hint: impl Into<String>) -> Self {
        User {
            message: message.into(),
            hint: Some(hint.into()),
        }
    }
}

impl fmt::Display for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for User {}

/// Invalid input: a config, inventory or flag that fails validation. Exit 2.
#[derive(Debug)]
pub struct InvalidInput(pub Vec<String>);

impl fmt::Display for InvalidInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("\n"))
    }
}

impl std::error::Error for InvalidInput {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Ok = 0,
    Failed = 1,
    /// Invalid input, or "changes pending" for `--detailed-exitcode`.
    Two = 2,
}

/// Hints found anywhere in the error chain, outermost first. A [`User`]
/// attached as context (`err.context(User::new(..))`, to keep Nomad's
/// answer below it) is no link of `chain()` by itself: anyhow's downcast
/// finds it.
pub fn hints(err: &anyhow::Error) -> Vec<String> {
    let mut users: Vec<&User> = err.chain().filter_map(|e| e.downcast_ref::<User>()).collect();
    if let Some(u) = err.downcast_ref::<User>() {
        if !users.iter().any(|x| std::ptr::eq(*x, u)) {
            users.insert(0, u);
        }
    }
    users.into_iter().filter_map(|u| u.hint.clone()).collect()
}

/// Whether the error is one the user can fix (a [`User`] anywhere in it).
pub fn is_user(err: &anyhow::Error) -> bool {
    err.downcast_ref::<User>().is_some() || err.chain().any(|e| e.is::<User>())
}

pub fn is_invalid_input(err: &anyhow::Error) -> bool {
    err.chain().any(|e| e.is::<InvalidInput>()) || err.downcast_ref::<InvalidInput>().is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_of_a_user_error_given_as_context() {
        let inner = anyhow::anyhow!("GET /v1/acl/tokens: Nomad answered 403: Permission denied");
        let err = inner
            .context(User::new("the token lacks ACL write", "use the management token"))
            .context("observing acl");
        assert_eq!(hints(&err), ["use the management token"]);
        assert!(is_user(&err));
        assert_eq!(
            format!("{err:#}"),
            "observing acl: the token lacks ACL write: GET /v1/acl/tokens: Nomad answered 403: Permission denied"
        );
        let plain: anyhow::Error = User::new("no endpoint", "set NOMAD_ADDR").into();
        assert_eq!(hints(&plain.context("x")), ["set NOMAD_ADDR"]);
        assert!(!is_user(&anyhow::anyhow!("boom")));
    }
}
