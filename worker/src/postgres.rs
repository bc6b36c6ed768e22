//! PostgreSQL connections, shared by the PostgreSQL sink and the PostgreSQL lookup tables.

use std::time::Duration;

use sluice_crds::{PostgresConnectionSpec, PostgresSslMode};
use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

/// Opens a connection with the spec's settings and drives it on a spawned task (closed when the
/// returned client is dropped). The password comes from the environment variable named by
/// `passwordEnv` (default `PGPASSWORD`) and is never logged. Connect timeout: 10 s. TLS follows
/// `sslMode` (see [`crate::postgres_tls`]); with any mode but `disable` a server without TLS is
/// refused.
///
/// # Errors
/// The driver's message, prefixed with `connect to host:port`, for the caller to wrap in its own
/// (retryable) error kind.
pub async fn connect(
    c: &PostgresConnectionSpec,
    application_name: &str,
) -> std::result::Result<Client, String> {
    let password_env = c.password_env.as_deref().unwrap_or("PGPASSWORD");
    let mut config = tokio_postgres::Config::new();
    config
        .host(&c.host)
        .port(c.port)
        .dbname(&c.database)
        .user(&c.user)
        .application_name(application_name)
        .connect_timeout(Duration::from_secs(10));
    if let Ok(password) = std::env::var(password_env) {
        config.password(password);
    }
    let failed = |e: tokio_postgres::Error| {
        // The driver's Display hides the cause (e.g. "error performing TLS handshake"); the
        // source says why (an unknown CA, a name mismatch).
        let cause = std::error::Error::source(&e)
            .map(|s| format!(": {s}"))
            .unwrap_or_default();
        format!(
            "connect to {}:{} (sslMode {}): {e}{cause}",
            c.host,
            c.port,
            ssl_mode_name(c.ssl_mode)
        )
    };
    let application_name = application_name.to_string();
    if c.ssl_mode == PostgresSslMode::Disable {
        config.ssl_mode(SslMode::Disable);
        let (client, connection) = config.connect(NoTls).await.map_err(failed)?;
        tokio::spawn(drive(connection, application_name));
        return Ok(client);
    }
    // Never fall back to plain text once TLS is asked for.
    config.ssl_mode(SslMode::Require);
    let tls = MakeRustlsConnect::new(crate::postgres_tls::client_config(c)?);
    let (client, connection) = config.connect(tls).await.map_err(failed)?;
    tokio::spawn(drive(connection, application_name));
    Ok(client)
}

/// Drives a connection until the client is dropped or the server closes it.
async fn drive<F>(connection: F, application_name: String)
where
    F: std::future::Future<Output = Result<(), tokio_postgres::Error>>,
{
    if let Err(e) = connection.await {
        tracing::warn!(application = %application_name, error = %e, "postgres connection closed");
    }
}

/// libpq's spelling of a mode.
fn ssl_mode_name(mode: PostgresSslMode) -> &'static str {
    match mode {
        PostgresSslMode::Disable => "disable",
        PostgresSslMode::Require => "require",
        PostgresSslMode::VerifyCa => "verify-ca",
        PostgresSslMode::VerifyFull => "verify-full",
    }
}
