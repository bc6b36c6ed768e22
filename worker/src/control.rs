//! Who may use the worker's mutating HTTP endpoints (`POST /stop`, and any later one).
//!
//! A worker given a control token (the operator generates one per query and mounts it from a
//! Secret) accepts a mutating request only with `Authorization: Bearer <token>`, compared in
//! constant time; read-only endpoints (`/`, `/metrics`, `/progress`, `/healthz`) stay open so that
//! Prometheus and dashboards need no credential. Without a token a local `sluice-worker run`
//! (bound to 127.0.0.1 by default) stays open, while a pod, reachable from the whole cluster,
//! refuses every mutating request: it is then stopped by its SIGTERM only.

use std::path::Path;

use subtle::ConstantTimeEq;

/// Environment variable holding the control token itself.
pub const TOKEN_ENV: &str = sluice_crds::contract::ENV_CONTROL_TOKEN;

/// Longest token accepted (bytes); a generated token is 32–64 characters.
const MAX_TOKEN_BYTES: usize = 4096;

/// The rule for mutating endpoints.
#[derive(Clone)]
pub enum ControlAuth {
    /// Anyone who can reach the port (local runs without a token).
    Open,
    /// Only requests bearing this token.
    Token(String),
    /// Nobody (a pod without a token).
    Disabled,
}

impl std::fmt::Debug for ControlAuth {
    // Never print the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Open => "Open",
            Self::Token(_) => "Token(<redacted>)",
            Self::Disabled => "Disabled",
        })
    }
}

/// Why a request was refused (the body of the 401 answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No `Authorization: Bearer` header, or a different token.
    BadToken,
    /// The worker has no token configured and is not open.
    Disabled,
}

impl Refusal {
    /// The message sent back (never the expected token).
    pub fn message(self) -> &'static str {
        match self {
            Self::BadToken => "this endpoint needs `Authorization: Bearer <control token>`",
            Self::Disabled => {
                "control endpoints are disabled: the worker has no control token \
                 (SLUICE_CONTROL_TOKEN or --control-token-file)"
            }
        }
    }
}

impl ControlAuth {
    /// The token from `file` (trailing whitespace trimmed) if given, else from
    /// [`TOKEN_ENV`]; `fallback` when neither gives a token.
    ///
    /// # Errors
    /// The file cannot be read, is empty, or is longer than 4096 bytes.
    pub fn from_sources(file: Option<&Path>, fallback: ControlAuth) -> Result<Self, String> {
        let token =
            match file {
                Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
                    format!("cannot read the control token {}: {e}", path.display())
                })?),
                None => std::env::var(TOKEN_ENV).ok(),
            };
        match token.as_deref().map(str::trim) {
            None => Ok(fallback),
            Some("") if file.is_none() => Ok(fallback),
            Some("") => Err("the control token file is empty".into()),
            Some(t) if t.len() > MAX_TOKEN_BYTES => Err(format!(
                "the control token is longer than {MAX_TOKEN_BYTES} bytes"
            )),
            Some(t) => Ok(Self::Token(t.to_string())),
        }
    }

    /// Decides on a request from its `Authorization` header value.
    ///
    /// # Errors
    /// The [`Refusal`] to answer with 401.
    pub fn authorize(&self, authorization: Option<&[u8]>) -> Result<(), Refusal> {
        match self {
            Self::Open => Ok(()),
            Self::Disabled => Err(Refusal::Disabled),
            Self::Token(expected) => {
                let given = authorization
                    .and_then(|v| v.strip_prefix(b"Bearer "))
                    .map(<[u8]>::trim_ascii)
                    .ok_or(Refusal::BadToken)?;
                // `ct_eq` is constant-time for equal lengths; a length mismatch leaks only the length.
                if bool::from(given.ct_eq(expected.as_bytes())) {
                    Ok(())
                } else {
                    Err(Refusal::BadToken)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_rules() {
        let auth = ControlAuth::Token("s3cret-token".into());
        assert_eq!(auth.authorize(Some(b"Bearer s3cret-token")), Ok(()));
        assert_eq!(auth.authorize(None), Err(Refusal::BadToken));
        assert_eq!(
            auth.authorize(Some(b"Bearer s3cret-tokeN")),
            Err(Refusal::BadToken)
        );
        assert_eq!(
            auth.authorize(Some(b"Bearer s3cret")),
            Err(Refusal::BadToken)
        );
        assert_eq!(
            auth.authorize(Some(b"s3cret-token")),
            Err(Refusal::BadToken)
        );
        assert_eq!(ControlAuth::Open.authorize(None), Ok(()));
        assert_eq!(
            ControlAuth::Disabled.authorize(Some(b"Bearer x")),
            Err(Refusal::Disabled)
        );
        assert!(!format!("{auth:?}").contains("s3cret"));
    }

    #[test]
    fn token_file_is_trimmed_and_an_empty_file_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        std::fs::write(&path, "abc\n").expect("write");
        let auth = ControlAuth::from_sources(Some(&path), ControlAuth::Open).expect("token");
        assert_eq!(auth.authorize(Some(b"Bearer abc")), Ok(()));
        std::fs::write(&path, "\n").expect("write");
        assert!(ControlAuth::from_sources(Some(&path), ControlAuth::Open).is_err());
        assert!(
            ControlAuth::from_sources(Some(&dir.path().join("missing")), ControlAuth::Open)
                .is_err()
        );
    }
}
