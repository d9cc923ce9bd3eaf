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

/// Hints found anywhere in the error chain, outermost first.
pub fn hints(err: &anyhow::Error) -> Vec<String> {
    err.chain()
        .filter_map(|e| e.downcast_ref::<User>())
        .filter_map(|u| u.hint.clone())
        .collect()
}

pub fn is_invalid_input(err: &anyhow::Error) -> bool {
    err.chain().any(|e| e.is::<InvalidInput>())
}
