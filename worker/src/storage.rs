//! One way to turn a user's location (local path, `file://` URL or `s3://bucket/prefix`) into an
//! object store and a path inside it, as Arroyo's `arroyo-storage` does.
//!
//! S3 settings come from the environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_REGION`, `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`), so the same manifest runs against AWS, MinIO
//! or SeaweedFS. Conditional put (`If-None-Match`/`If-Match`) is switched on: the checkpoint relies on
//! create-if-absent to fence a second writer.

use std::path::PathBuf;
use std::sync::Arc;

use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ClientOptions, ObjectStore, RetryConfig};

use crate::error::{EngineError, Result};

/// A store and the prefix inside it that a location names.
#[derive(Clone, Debug)]
pub struct Location {
    pub store: Arc<dyn ObjectStore>,
    /// Prefix inside the store (no leading or trailing slash).
    pub prefix: Path,
    /// The location as the user wrote it, normalised (for messages and metadata).
    pub url: String,
}

impl Location {
    /// Resolves `location`: `s3://bucket/prefix`, `file:///abs/path`, or a local path (created if
    /// missing, made absolute).
    ///
    /// # Errors
    /// [`EngineError::InvalidQuery`] for an unsupported scheme or unusable path;
    /// [`EngineError::Storage`] when the S3 client cannot be built.
    pub fn parse(location: &str) -> Result<Self> {
        if let Some(rest) = location
            .strip_prefix("s3://")
            .or_else(|| location.strip_prefix("s3a://"))
        {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(EngineError::InvalidQuery(format!(
                    "`{location}` has no bucket"
                )));
            }
            let store = s3_store(bucket).map_err(|e| EngineError::storage(location, e))?;
            return Ok(Self {
                store,
                prefix: Path::from(prefix.trim_matches('/')),
                url: format!("s3://{bucket}/{}", prefix.trim_matches('/')),
            });
        }
        let local = match location.strip_prefix("file://") {
            Some(path) => PathBuf::from(path),
            None if location.contains("://") => {
                return Err(EngineError::InvalidQuery(format!(
                    "`{location}`: only local paths, file:// and s3:// are supported"
                )));
            }
            None => PathBuf::from(location),
        };
        std::fs::create_dir_all(&local).map_err(|e| {
            EngineError::InvalidQuery(format!("cannot create directory {}: {e}", local.display()))
        })?;
        let absolute = std::fs::canonicalize(&local).map_err(|e| {
            EngineError::InvalidQuery(format!("cannot resolve {}: {e}", local.display()))
        })?;
        let store = LocalFileSystem::new_with_prefix(&absolute)
            .map_err(|e| EngineError::storage(location, e))?;
        Ok(Self {
            store: Arc::new(store),
            prefix: Path::default(),
            url: format!("file://{}", absolute.display()),
        })
    }

    /// A path below this location's prefix.
    pub fn child(&self, relative: &str) -> Path {
        let mut path = self.prefix.clone();
        for part in relative.split('/').filter(|p| !p.is_empty()) {
            path = path.join(part);
        }
        path
    }

    /// A location for a sub-folder, sharing the store.
    pub fn sub(&self, relative: &str) -> Self {
        Self {
            store: self.store.clone(),
            prefix: self.child(relative),
            url: format!(
                "{}/{}",
                self.url.trim_end_matches('/'),
                relative.trim_matches('/')
            ),
        }
    }
}

fn s3_store(bucket: &str) -> object_store::Result<Arc<dyn ObjectStore>> {
    let mut builder = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_conditional_put(S3ConditionalPut::ETagMatch)
        .with_retry(RetryConfig {
            max_retries: 3,
            retry_timeout: std::time::Duration::from_secs(10),
            ..RetryConfig::default()
        })
        .with_client_options(ClientOptions::new().with_timeout(std::time::Duration::from_secs(30)));
    if let Ok(endpoint) = std::env::var("AWS_ENDPOINT_URL") {
        // A custom endpoint (MinIO, SeaweedFS) serves buckets as paths, often over plain http.
        builder = builder
            .with_endpoint(&endpoint)
            .with_virtual_hosted_style_request(false)
            .with_allow_http(endpoint.starts_with("http://"));
    }
    if std::env::var("AWS_REGION").is_err() && std::env::var("AWS_DEFAULT_REGION").is_err() {
        builder = builder.with_region("us-east-1");
    }
    Ok(Arc::new(builder.build()?))
}
