//! Checkpoint manager: resolves a query's checkpoint location, proves the operator can write and
//! read it, claims it for exactly one query, and honours `retention` when the query is deleted.
//!
//! Layout (docs/architecture.md): `<location>/<namespace>/<name>/<uid>/` holds the worker's
//! checkpoint and `_sluice/owner.json`, written once with a conditional create (`PutMode::Create`,
//! S3 `If-None-Match: *`). Two queries can therefore never share a location: the second claim sees
//! `AlreadyExists`, reads the marker and is refused with [`Error::CheckpointOwned`].
//!
//! Object stores: `s3://bucket/prefix` (credentials and endpoint from the usual `AWS_*`
//! variables, see [`StoreConfig::from_env`]; conditional put with ETag matching as MinIO and
//! SeaweedFS implement it) and `file:///dir` (local backend, tests).

use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use sluice_crds::Retention;
use url::Url;

use crate::error::{Error, Result};

/// Object name of the ownership marker, relative to the resolved location.
pub const OWNER_MARKER: &str = "_sluice/owner.json";

/// Resolves `<base>/<namespace>/<name>/<uid>/` (always ending in `/`). An absolute local path
/// (`/tmp/q/ckpt`) is the `file://` URL of that directory, as `sluice-worker run` reads it, so
/// one manifest runs the same way under `run`, the local backend and Kubernetes.
///
/// # Errors
/// [`Error::CheckpointLocation`] when `base` is neither an absolute path nor an `s3://` or
/// `file://` URL.
///
/// ```
/// let url = sluice_operator::checkpoint::resolve("s3://ckpt/sluice", "prod", "iot", "1234").unwrap();
/// assert_eq!(url, "s3://ckpt/sluice/prod/iot/1234/");
/// ```
pub fn resolve(base: &str, namespace: &str, name: &str, uid: &str) -> Result<String> {
    let url = if base.starts_with('/') {
        Url::from_directory_path(base).map_err(|()| location_error(base, "not a directory path"))?
    } else {
        Url::parse(base).map_err(|e| match e {
            url::ParseError::RelativeUrlWithoutBase => location_error(
                base,
                "a relative path (use an absolute path, a file:// or an s3:// URL)",
            ),
            e => location_error(base, e.to_string()),
        })?
    };
    let base = url.as_str();
    match url.scheme() {
        "s3" | "s3a" => {
            if url.host_str().is_none_or(str::is_empty) {
                return Err(location_error(base, "no bucket in the URL"));
            }
        }
        "file" => {}
        other => {
            return Err(location_error(
                base,
                format!("unsupported scheme `{other}` (use s3:// or file://)"),
            ));
        }
    }
    Ok(format!(
        "{}/{namespace}/{name}/{uid}/",
        base.trim_end_matches('/')
    ))
}

fn location_error(location: &str, message: impl Into<String>) -> Error {
    Error::CheckpointLocation {
        location: location.to_string(),
        message: message.into(),
    }
}

/// The content of `_sluice/owner.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Owner {
    pub namespace: String,
    pub name: String,
    /// `metadata.uid`: what makes two queries with the same name (deleted and re-created) distinct.
    pub uid: String,
    /// RFC 3339 time of the claim (informational).
    #[serde(default)]
    pub claimed_at: String,
}

impl Owner {
    fn describe(&self) -> String {
        format!(
            "StreamingQuery {}/{} (uid {})",
            self.namespace, self.name, self.uid
        )
    }
}

/// Result of [`CheckpointManager::claim`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// The marker did not exist and was written now.
    Created,
    /// The marker already names this query (every later reconcile).
    AlreadyOwned,
}

/// Result of [`CheckpointManager::release`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Release {
    /// `retention: Retain`: nothing was touched.
    Retained,
    /// `retention: Delete`: this many objects under the location were deleted.
    Deleted { objects: usize },
}

/// How to reach S3-compatible stores. Unset fields fall back to object_store's defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreConfig {
    /// `http://minio:9000`; `http://` endpoints enable plain HTTP.
    pub endpoint: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub region: Option<String>,
}

impl StoreConfig {
    /// Reads `AWS_ENDPOINT_URL` (or `AWS_ENDPOINT`), `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_REGION` (or `AWS_DEFAULT_REGION`).
    pub fn from_env() -> Self {
        let var = |names: &[&str]| {
            names
                .iter()
                .find_map(|n| std::env::var(n).ok().filter(|v| !v.is_empty()))
        };
        Self {
            endpoint: var(&["AWS_ENDPOINT_URL", "AWS_ENDPOINT"]),
            access_key_id: var(&["AWS_ACCESS_KEY_ID"]),
            secret_access_key: var(&["AWS_SECRET_ACCESS_KEY"]),
            region: var(&["AWS_REGION", "AWS_DEFAULT_REGION"]),
        }
    }
}

/// Opens object stores for checkpoint URLs and manages the ownership marker.
#[derive(Clone, Debug, Default)]
pub struct CheckpointManager {
    config: StoreConfig,
}

impl CheckpointManager {
    pub fn new(config: StoreConfig) -> Self {
        Self { config }
    }

    /// The store and the path prefix for a resolved location URL.
    ///
    /// # Errors
    /// [`Error::CheckpointLocation`] for an unusable URL, [`Error::ObjectStore`] when the store
    /// cannot be built.
    pub fn open(&self, location: &str) -> Result<(Arc<dyn ObjectStore>, Path)> {
        let url = Url::parse(location).map_err(|e| location_error(location, e.to_string()))?;
        match url.scheme() {
            "s3" | "s3a" => {
                let bucket = url
                    .host_str()
                    .ok_or_else(|| location_error(location, "no bucket"))?;
                let mut builder = AmazonS3Builder::new()
                    .with_bucket_name(bucket)
                    .with_conditional_put(S3ConditionalPut::ETagMatch)
                    .with_region(
                        self.config
                            .region
                            .clone()
                            .unwrap_or_else(|| "us-east-1".into()),
                    );
                if let Some(endpoint) = &self.config.endpoint {
                    builder = builder
                        .with_endpoint(endpoint)
                        .with_allow_http(endpoint.starts_with("http://"));
                }
                if let Some(key) = &self.config.access_key_id {
                    builder = builder.with_access_key_id(key);
                }
                if let Some(secret) = &self.config.secret_access_key {
                    builder = builder.with_secret_access_key(secret);
                }
                let prefix = Path::from(url.path().trim_matches('/'));
                Ok((Arc::new(builder.build()?), prefix))
            }
            "file" => {
                let path = url
                    .to_file_path()
                    .map_err(|()| location_error(location, "not a local path"))?;
                let prefix = Path::from_absolute_path(&path)
                    .map_err(|e| location_error(location, e.to_string()))?;
                Ok((Arc::new(LocalFileSystem::new()), prefix))
            }
            other => Err(location_error(
                location,
                format!("unsupported scheme `{other}`"),
            )),
        }
    }

    /// Claims `location` for `owner`: when `_sluice/owner.json` already names `owner`, one read
    /// and no write (what every reconcile after the first sees); otherwise a conditional create
    /// of the marker, then a read back (proving write and read credentials).
    ///
    /// # Errors
    /// [`Error::CheckpointOwned`] when the marker names another query (a user error: the query
    /// must point elsewhere); [`Error::ObjectStore`] for credentials, network or server failures;
    /// [`Error::CheckpointLocation`] for an unusable URL or a corrupt marker.
    pub async fn claim(&self, location: &str, owner: &Owner) -> Result<Claim> {
        let (store, prefix) = self.open(location)?;
        let marker = prefix.clone().join("_sluice").join("owner.json");
        // Already ours (every reconcile after the first): verified with one read, no write.
        if let Some(found) = read_owner(store.as_ref(), &marker, location).await?
            && found.uid == owner.uid
        {
            return Ok(Claim::AlreadyOwned);
        }
        let body =
            serde_json::to_vec_pretty(owner).map_err(|e| Error::Serialization(e.to_string()))?;
        let options = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        let outcome = match store
            .put_opts(&marker, PutPayload::from(body), options)
            .await
        {
            Ok(_) => Claim::Created,
            Err(object_store::Error::AlreadyExists { .. }) => Claim::AlreadyOwned,
            Err(e) => return Err(e.into()),
        };
        let found = read_owner(store.as_ref(), &marker, location).await?;
        match found {
            Some(found) if found.uid == owner.uid => Ok(outcome),
            Some(found) => Err(Error::CheckpointOwned {
                location: location.to_string(),
                owner: found.describe(),
            }),
            None => Err(location_error(
                location,
                "the ownership marker vanished after it was written",
            )),
        }
    }

    /// Applies `retention` to a deleted query's location.
    ///
    /// `Delete` removes every object under the location, but only if the marker names `owner` (or
    /// is absent: nothing was ever claimed there); a location claimed by another query is left alone.
    ///
    /// # Errors
    /// [`Error::CheckpointOwned`] when another query owns the location; [`Error::ObjectStore`] for
    /// store failures (the finalizer then stays and the delete is retried).
    pub async fn release(
        &self,
        location: &str,
        owner: &Owner,
        retention: Retention,
    ) -> Result<Release> {
        if retention == Retention::Retain {
            return Ok(Release::Retained);
        }
        let (store, prefix) = self.open(location)?;
        let marker = prefix.clone().join("_sluice").join("owner.json");
        if let Some(found) = read_owner(store.as_ref(), &marker, location).await?
            && found.uid != owner.uid
        {
            return Err(Error::CheckpointOwned {
                location: location.to_string(),
                owner: found.describe(),
            });
        }
        let listing = store
            .list(Some(&prefix))
            .map_ok(|meta| meta.location)
            .boxed();
        let deleted: Vec<Path> = store.delete_stream(listing).try_collect().await?;
        Ok(Release::Deleted {
            objects: deleted.len(),
        })
    }
}

async fn read_owner(
    store: &dyn ObjectStore,
    marker: &Path,
    location: &str,
) -> Result<Option<Owner>> {
    let bytes = match store.get(marker).await {
        Ok(result) => result.bytes().await?,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    serde_json::from_slice(&bytes).map(Some).map_err(|e| {
        location_error(
            location,
            format!("{OWNER_MARKER} is not an owner record: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_appends_namespace_name_uid() {
        assert_eq!(
            resolve("s3://b", "ns", "q", "u").ok().as_deref(),
            Some("s3://b/ns/q/u/")
        );
        assert_eq!(
            resolve("s3://b/p/", "ns", "q", "u").ok().as_deref(),
            Some("s3://b/p/ns/q/u/")
        );
        assert_eq!(
            resolve("file:///tmp/ck", "ns", "q", "u").ok().as_deref(),
            Some("file:///tmp/ck/ns/q/u/")
        );
    }

    /// A plain absolute path is accepted as `sluice-worker run` accepts it (issue: the local
    /// backend refused `checkpoint: {location: /tmp/q/ckpt}`).
    #[test]
    fn resolve_accepts_absolute_local_paths_as_file_urls() {
        assert_eq!(
            resolve("/tmp/q/ckpt", "ns", "q", "u").ok().as_deref(),
            Some("file:///tmp/q/ckpt/ns/q/u/")
        );
        assert_eq!(
            resolve("/tmp/q/ckpt/", "ns", "q", "u").ok().as_deref(),
            Some("file:///tmp/q/ckpt/ns/q/u/")
        );
        match resolve("checkpoints/q", "ns", "q", "u") {
            Err(Error::CheckpointLocation { location, message }) => {
                assert_eq!(location, "checkpoints/q");
                assert_eq!(
                    message,
                    "a relative path (use an absolute path, a file:// or an s3:// URL)"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn resolve_rejects_other_schemes_and_missing_bucket() {
        assert!(matches!(
            resolve("gs://b", "n", "q", "u"),
            Err(Error::CheckpointLocation { .. })
        ));
        assert!(matches!(
            resolve("not a url", "n", "q", "u"),
            Err(Error::CheckpointLocation { .. })
        ));
        assert!(matches!(
            resolve("s3:///p", "n", "q", "u"),
            Err(Error::CheckpointLocation { .. })
        ));
    }

    fn owner(uid: &str) -> Owner {
        Owner {
            namespace: "ns".into(),
            name: format!("q-{uid}"),
            uid: uid.into(),
            claimed_at: String::new(),
        }
    }

    #[tokio::test]
    async fn local_claim_release_cycle() {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = Url::from_directory_path(dir.path())
            .expect("url")
            .to_string();
        let location = resolve(&base, "ns", "q", "u1").expect("resolve");
        let manager = CheckpointManager::default();
        assert_eq!(
            manager.claim(&location, &owner("u1")).await.ok(),
            Some(Claim::Created)
        );
        assert_eq!(
            manager.claim(&location, &owner("u1")).await.ok(),
            Some(Claim::AlreadyOwned)
        );
        let refused = manager.claim(&location, &owner("u2")).await;
        assert!(
            matches!(refused, Err(Error::CheckpointOwned { .. })),
            "{refused:?}"
        );
        assert_eq!(
            manager
                .release(&location, &owner("u2"), Retention::Delete)
                .await
                .err()
                .map(|e| e.metric_label()),
            Some("checkpoint_owned")
        );
        let marker = dir.path().join("ns/q/u1/_sluice/owner.json");
        assert_eq!(
            manager
                .release(&location, &owner("u1"), Retention::Retain)
                .await
                .ok(),
            Some(Release::Retained)
        );
        assert!(marker.exists());
        assert_eq!(
            manager
                .release(&location, &owner("u1"), Retention::Delete)
                .await
                .ok(),
            Some(Release::Deleted { objects: 1 })
        );
        assert!(!marker.exists());
    }
}
