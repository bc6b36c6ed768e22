//! PostgreSQL connections, shared by the PostgreSQL sink and the PostgreSQL lookup tables.

use std::time::Duration;

use sluice_crds::PostgresConnectionSpec;
use tokio_postgres::{Client, NoTls};

/// Opens a connection with the spec's settings and drives it on a spawned task (closed when the
/// returned client is dropped). The password comes from the environment variable named by
/// `passwordEnv` (default `PGPASSWORD`) and is never logged. Connect timeout: 10 s.
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
    let (client, connection) = config
        .connect(NoTls)
        .await
        .map_err(|e| format!("connect to {}:{}: {e}", c.host, c.port))?;
    let application_name = application_name.to_string();
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(application = %application_name, error = %e, "postgres connection closed");
        }
    });
    Ok(client)
}
