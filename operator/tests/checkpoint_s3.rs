//! Checkpoint manager against a real S3 server (SeaweedFS from `e2e/servers/start.sh`):
//! credentials are enforced, the ownership marker is a conditional create, two queries racing for
//! one location get exactly one winner, and retention is honoured.
//!
//! Needs `SLUICE_TEST_S3_ENDPOINT` (+ `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, bucket
//! `SLUICE_TEST_S3_BUCKET`, default `sluice-test`). Skipped loudly without it, unless
//! `SLUICE_REQUIRE_SERVERS=1`.

use sluice_crds::Retention;
use sluice_operator::Error;
use sluice_operator::checkpoint::{CheckpointManager, Claim, Owner, Release, StoreConfig, resolve};

fn s3() -> Option<(StoreConfig, String)> {
    let Ok(endpoint) = std::env::var("SLUICE_TEST_S3_ENDPOINT") else {
        assert!(
            std::env::var("SLUICE_REQUIRE_SERVERS").as_deref() != Ok("1"),
            "SLUICE_REQUIRE_SERVERS=1 but SLUICE_TEST_S3_ENDPOINT is unset: run e2e/servers/start.sh"
        );
        eprintln!(
            "\n*** SKIPPED: SLUICE_TEST_S3_ENDPOINT is unset; source /tmp/sluice-servers/env.sh to run the S3 checkpoint tests ***\n"
        );
        return None;
    };
    let bucket = std::env::var("SLUICE_TEST_S3_BUCKET").unwrap_or_else(|_| "sluice-test".into());
    let config = StoreConfig {
        endpoint: Some(endpoint),
        region: Some(std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into())),
        ..StoreConfig::from_env()
    };
    Some((
        config,
        format!("s3://{bucket}/operator-tests/{}", uuid::Uuid::new_v4()),
    ))
}

fn owner(uid: &str) -> Owner {
    Owner {
        namespace: "default".into(),
        name: format!("query-{uid}"),
        uid: uid.into(),
        claimed_at: String::new(),
    }
}

#[tokio::test]
async fn claim_is_idempotent_for_the_owner_and_refused_for_others() {
    let Some((config, base)) = s3() else { return };
    let manager = CheckpointManager::new(config);
    let location = resolve(&base, "default", "q", "uid-a").expect("resolve");
    assert_eq!(
        manager
            .claim(&location, &owner("uid-a"))
            .await
            .expect("first claim"),
        Claim::Created
    );
    assert_eq!(
        manager
            .claim(&location, &owner("uid-a"))
            .await
            .expect("again"),
        Claim::AlreadyOwned
    );
    let refused = manager.claim(&location, &owner("uid-b")).await;
    match refused {
        Err(Error::CheckpointOwned { owner, .. }) => assert!(owner.contains("uid-a"), "{owner}"),
        other => panic!("expected CheckpointOwned, got {other:?}"),
    }
}

#[tokio::test]
async fn two_queries_racing_for_one_location_get_one_winner() {
    let Some((config, base)) = s3() else { return };
    let location = resolve(&base, "default", "shared", "uid").expect("resolve");
    for round in 0..5 {
        let location = format!("{location}round-{round}/");
        let (a, b) = (
            CheckpointManager::new(config.clone()),
            CheckpointManager::new(config.clone()),
        );
        let (la, lb) = (location.clone(), location.clone());
        let first = tokio::spawn(async move { a.claim(&la, &owner("uid-1")).await });
        let second = tokio::spawn(async move { b.claim(&lb, &owner("uid-2")).await });
        let results = [first.await.expect("join"), second.await.expect("join")];
        let won = results
            .iter()
            .filter(|r| matches!(r, Ok(Claim::Created)))
            .count();
        let refused = results
            .iter()
            .filter(|r| matches!(r, Err(Error::CheckpointOwned { .. })))
            .count();
        assert_eq!((won, refused), (1, 1), "round {round}: {results:?}");
    }
}

#[tokio::test]
async fn wrong_credentials_are_an_external_error() {
    let Some((mut config, base)) = s3() else {
        return;
    };
    config.secret_access_key = Some("not-the-secret".into());
    let location = resolve(&base, "default", "q", "uid-x").expect("resolve");
    let error = CheckpointManager::new(config)
        .claim(&location, &owner("uid-x"))
        .await
        .expect_err("must fail");
    assert!(matches!(error, Error::ObjectStore(_)), "{error:?}");
    assert!(error.is_retryable());
}

#[tokio::test]
async fn retention_delete_removes_everything_and_retain_keeps_it() {
    let Some((config, base)) = s3() else { return };
    let manager = CheckpointManager::new(config);
    let kept = resolve(&base, "default", "kept", "uid-k").expect("resolve");
    manager.claim(&kept, &owner("uid-k")).await.expect("claim");
    assert_eq!(
        manager
            .release(&kept, &owner("uid-k"), Retention::Retain)
            .await
            .expect("retain"),
        Release::Retained
    );
    assert_eq!(
        manager
            .claim(&kept, &owner("uid-k"))
            .await
            .expect("still there"),
        Claim::AlreadyOwned
    );

    let gone = resolve(&base, "default", "gone", "uid-g").expect("resolve");
    manager.claim(&gone, &owner("uid-g")).await.expect("claim");
    // Something a worker would have written.
    let (store, prefix) = manager.open(&gone).expect("open");
    use object_store::ObjectStoreExt;
    store
        .put(
            &prefix
                .clone()
                .join("tasks")
                .join("0")
                .join("commits")
                .join("0"),
            "{}".into(),
        )
        .await
        .expect("put");
    // Another query cannot delete it.
    assert!(matches!(
        manager
            .release(&gone, &owner("uid-other"), Retention::Delete)
            .await,
        Err(Error::CheckpointOwned { .. })
    ));
    assert_eq!(
        manager
            .release(&gone, &owner("uid-g"), Retention::Delete)
            .await
            .expect("delete"),
        Release::Deleted { objects: 2 }
    );
    // Deleted means a fresh claim succeeds.
    assert_eq!(
        manager
            .claim(&gone, &owner("uid-g"))
            .await
            .expect("reclaim"),
        Claim::Created
    );
}
