//! Opening a store from its URL: a local directory or S3.

use std::collections::BTreeMap;
use std::sync::Arc;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, RetryConfig};

use super::StoreError;

/// The local directory store: creates `dir` if needed.
pub(super) fn open_local(
    url: &str,
    dir: &str,
    options: &BTreeMap<String, String>,
) -> Result<(Arc<dyn ObjectStore>, Path, String), StoreError> {
    if !options.is_empty() {
        let keys: Vec<&str> = options.keys().map(String::as_str).collect();
        return Err(StoreError::Config {
            url: url.to_string(),
            message: format!(
                "options ({}) only apply to s3:// stores; remove them",
                keys.join(", ")
            ),
        });
    }
    std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
        path: dir.to_string(),
        source,
    })?;
    let canonical = std::fs::canonicalize(dir).map_err(|source| StoreError::CreateDir {
        path: dir.to_string(),
        source,
    })?;
    let store =
        LocalFileSystem::new_with_prefix(&canonical).map_err(|source| StoreError::Open {
            url: url.to_string(),
            source,
        })?;
    let shown = format!("file://{}", canonical.display());
    Ok((Arc::new(store), Path::default(), shown))
}

/// The S3 store for `rest` = `bucket/prefix` of an `s3://` URL.
pub(super) fn open_s3(
    url: &str,
    rest: &str,
    options: &BTreeMap<String, String>,
) -> Result<(Arc<dyn ObjectStore>, Path, String), StoreError> {
    let config = |message: String| StoreError::Config {
        url: url.to_string(),
        message,
    };
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(config("no bucket; write s3://bucket/prefix".into()));
    }
    let prefix = prefix.trim_matches('/');
    let prefix_path =
        Path::parse(prefix).map_err(|e| config(format!("invalid prefix `{prefix}`: {e}")))?;

    let mut builder = AmazonS3Builder::from_env();
    for (key, value) in options {
        let parsed: AmazonS3ConfigKey = key.to_ascii_lowercase().parse().map_err(|_| {
            config(format!(
                "unknown S3 option `{key}` (known: endpoint, region, access_key_id, secret_access_key, \
                 session_token, allow_http, and object_store's other S3 settings)"
            ))
        })?;
        if matches!(parsed, AmazonS3ConfigKey::Bucket) {
            return Err(config(
                "the bucket is given by the URL (s3://bucket/prefix), not by an option".into(),
            ));
        }
        builder = builder.with_config(parsed, value);
    }
    let endpoint = builder.get_config_value(&AmazonS3ConfigKey::Endpoint);
    let store = builder
        .with_bucket_name(bucket)
        .with_retry(RetryConfig::default())
        .build()
        .map_err(|source| StoreError::Open {
            url: url.to_string(),
            source,
        })?;
    let location = if prefix.is_empty() {
        format!("s3://{bucket}")
    } else {
        format!("s3://{bucket}/{prefix}")
    };
    let shown = match endpoint {
        Some(endpoint) => format!("{location} (endpoint {endpoint})"),
        None => location,
    };
    Ok((Arc::new(store), prefix_path, shown))
}
