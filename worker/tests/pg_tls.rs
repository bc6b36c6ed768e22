//! PostgreSQL over TLS for real (`e2e/servers` runs PostgreSQL with `ssl = on` and a throwaway CA):
//! `verify-full` with the CA connects and the session is encrypted; an unrelated CA is refused with
//! the certificate error; `require` encrypts without checking; `disable` stays plain text.

mod common;

use sluice_crds::{PostgresConnectionSpec, PostgresSslMode, SecretRef};

fn connection(
    url: &str,
    host: &str,
    mode: PostgresSslMode,
    ca: Option<&str>,
) -> PostgresConnectionSpec {
    let port = url
        .rsplit_once(':')
        .and_then(|(_, rest)| rest.split('/').next())
        .and_then(|p| p.parse().ok())
        .expect("port in SLUICE_TEST_PG_URL");
    PostgresConnectionSpec {
        host: host.into(),
        port,
        database: "sluice".into(),
        user: "sluice".into(),
        password_env: Some("PGPASSWORD".into()),
        ssl_mode: mode,
        ssl_root_cert: ca.map(|path| SecretRef {
            env: None,
            path: Some(path.into()),
        }),
    }
}

async fn encrypted(c: &PostgresConnectionSpec) -> Result<bool, String> {
    let client = sluice_worker::postgres::connect(c, "sluice-tls-test").await?;
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.get(0))
}

#[tokio::test]
async fn verify_full_connects_encrypted_and_a_wrong_ca_is_refused() {
    let test = "verify_full_connects_encrypted_and_a_wrong_ca_is_refused";
    let Some(url) = common::postgres(test) else {
        return;
    };
    let ca = std::env::var("SLUICE_TEST_TLS_CA").expect("SLUICE_TEST_TLS_CA");
    let wrong = std::env::var("SLUICE_TEST_TLS_WRONG_CA").expect("SLUICE_TEST_TLS_WRONG_CA");
    for host in ["127.0.0.1", "localhost"] {
        let full = connection(&url, host, PostgresSslMode::VerifyFull, Some(&ca));
        assert_eq!(encrypted(&full).await, Ok(true), "{host}");
    }
    let e = encrypted(&connection(
        &url,
        "127.0.0.1",
        PostgresSslMode::VerifyFull,
        Some(&wrong),
    ))
    .await
    .expect_err("an unrelated CA must be refused");
    assert!(
        e.contains("sslMode verify-full") && e.contains("invalid peer certificate: UnknownIssuer"),
        "{e}"
    );
    let e = encrypted(&connection(
        &url,
        "127.0.0.1",
        PostgresSslMode::VerifyCa,
        Some(&wrong),
    ))
    .await
    .expect_err("verify-ca checks the chain too");
    assert!(e.contains("UnknownIssuer"), "{e}");
    let require = connection(&url, "127.0.0.1", PostgresSslMode::Require, None);
    assert_eq!(encrypted(&require).await, Ok(true));
    let plain = connection(&url, "127.0.0.1", PostgresSslMode::Disable, None);
    assert_eq!(encrypted(&plain).await, Ok(false));
}
