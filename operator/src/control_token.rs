//! Control tokens: the bearer token a query's workers require on `POST /stop` (issue 16).
//!
//! One token per query on Kubernetes (kept in the Secret `sluice-<query>-control`, created once
//! and never rotated by reconciles) and one per deployment generation locally (given to each
//! worker process in its environment). The operator never logs, stores in a ConfigMap, status
//! or event, nor prints a token: [`ControlToken`]'s `Debug` is redacted.

use crate::error::{Error, Result};

/// Random bytes in a token (hex-encoded: 64 characters).
pub const TOKEN_BYTES: usize = 32;

/// A generated control token.
#[derive(Clone, PartialEq, Eq)]
pub struct ControlToken(String);

impl std::fmt::Debug for ControlToken {
    // Never print the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ControlToken(<redacted>)")
    }
}

impl ControlToken {
    /// [`TOKEN_BYTES`] bytes from the operating system's CSPRNG, hex-encoded.
    ///
    /// # Errors
    /// [`Error::Internal`] when the system has no random source.
    pub fn generate() -> Result<Self> {
        let mut bytes = [0u8; TOKEN_BYTES];
        getrandom::fill(&mut bytes)
            .map_err(|e| Error::Internal(format!("no random source for a control token: {e}")))?;
        Ok(Self(bytes.iter().map(|b| format!("{b:02x}")).collect()))
    }

    /// The token text (for the Secret, the worker's environment and the `Authorization` header
    /// only).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The `Authorization` header value.
    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_64_hex_characters_distinct_and_redacted() {
        let a = ControlToken::generate().expect("token");
        let b = ControlToken::generate().expect("token");
        assert_eq!(a.expose().len(), 2 * TOKEN_BYTES);
        assert!(a.expose().chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        assert_eq!(format!("{a:?}"), "ControlToken(<redacted>)");
        assert_eq!(a.bearer(), format!("Bearer {}", a.expose()));
    }
}
