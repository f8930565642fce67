//! # Checkpoint store: named binary sections in a local directory or S3
//!
//! A checkpoint is a set of named binary [`Section`]s (for example `global` and
//! `partition/metrics/0`) plus a small JSON metadata value, written by one member (process) of a
//! consumer group. What the sections hold is the caller's business; the store only keeps them
//! intact, finds the newest usable checkpoint again, and deletes old ones. Several members may
//! share one store.
//!
//! ## Layout
//!
//! Under the store's prefix (a local directory, or `s3://bucket/prefix`):
//!
//! ```text
//! checkpoints/{id}.data       the sections, concatenated
//! checkpoints/{id}.manifest   JSON of Manifest, "\n", xxh3-64 of that JSON in hex, "\n"
//! ```
//!
//! The data object is written first and the manifest last: a checkpoint exists once its manifest
//! exists. Every section, the whole data object and the manifest carry an xxh3-64 checksum, so a
//! damaged or truncated checkpoint is detected and [`CheckpointStore::load_newest`] falls back to
//! the previous one.
//!
//! Ids (`{epoch ms, 15 digits}-{sequence, 4 digits}-{member}`) sort chronologically as strings.
//!
//! ## Atomicity
//!
//! Each object is written with one `put`. On S3 a PUT is atomic: readers see the whole object or
//! none. On a local disk, object_store 0.13's `LocalFileSystem::put` writes to a staging file
//! `{path}#{n}` next to the target and renames it into place (`std::fs::rename`), so readers also
//! never see a partial file; `list` ignores the staging names. It does not fsync: after a power
//! loss a file may exist with missing contents, which the checksums catch.
//!
//! ## Retention
//!
//! After each successful write, a manifest is kept if it is among the newest `keep` overall, or
//! among the newest `keep` that contain some section name it contains, so that a partition last
//! checkpointed by a member that has since died is not lost. Others are deleted, manifest first and
//! data second, so a half-deleted checkpoint is never taken for a valid one. Data objects without a
//! manifest (a crash between the two writes) are deleted once they are older than ten minutes.

mod error;
mod format;
mod open;
mod retention;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};
use xxhash_rust::xxh3::xxh3_64;

pub use error::StoreError;
use format::{Decoded, DATA_SUFFIX, MANIFEST_SUFFIX};
use open::{open_local, open_s3};
use retention::Contents;

/// The checkpoint format this build writes, and the newest it reads.
pub const FORMAT_VERSION: u32 = 1;

/// Data objects without a manifest older than this are debris of a crash and are deleted.
const STRAY_DATA_AGE: Duration = Duration::from_secs(10 * 60);

/// Name of the folder, under the store's prefix, that holds the checkpoints.
const CHECKPOINTS_DIR: &str = "checkpoints";

/// One named part of a checkpoint, as given to [`CheckpointStore::write`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// Its name, unique within the checkpoint (for example `partition/metrics/0`).
    pub name: String,
    /// Its contents.
    pub bytes: Vec<u8>,
}

/// Where a section lies in a checkpoint's data object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SectionEntry {
    /// The section name.
    pub name: String,
    /// Offset of its first byte in the data object.
    pub offset: u64,
    /// Its length in bytes.
    pub len: u64,
    /// xxh3-64 of its bytes.
    pub checksum: u64,
}

/// The description of one checkpoint, stored as `checkpoints/{id}.manifest`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The checkpoint format ([`FORMAT_VERSION`] when written by this build).
    pub format_version: u32,
    /// The checkpoint id: `{epoch ms, 15 digits}-{sequence, 4 digits}-{member, sanitised}`;
    /// ids sort chronologically as strings.
    pub id: String,
    /// The member that wrote it, as given to [`CheckpointStore::write`].
    pub member: String,
    /// When it was written (Unix epoch milliseconds, wall clock of the writer).
    pub created_ms: i64,
    /// Object name of the data object, relative to the `checkpoints/` folder.
    pub data: String,
    /// Length of the data object in bytes.
    pub data_len: u64,
    /// xxh3-64 of the whole data object.
    pub data_checksum: u64,
    /// The sections, in the order they were written.
    pub sections: Vec<SectionEntry>,
    /// The caller's metadata.
    pub meta: serde_json::Value,
}

impl Manifest {
    /// Whether the checkpoint holds a section with this name.
    pub fn has_section(&self, name: &str) -> bool {
        self.sections.iter().any(|s| s.name == name)
    }
}

/// What [`CheckpointStore::write`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The new checkpoint's id.
    pub id: String,
    /// Bytes written (data and manifest).
    pub bytes: u64,
    /// Time taken to write the data and the manifest (retention afterwards is not included).
    pub duration: Duration,
}

/// A checkpoint read back and verified by [`CheckpointStore::load_newest`].
#[derive(Debug, Clone)]
pub struct Loaded {
    /// Its manifest.
    pub manifest: Manifest,
    /// Its data object, every checksum verified.
    data: Vec<u8>,
}

impl Loaded {
    /// The bytes of the section named `name`, if the checkpoint has it.
    pub fn section(&self, name: &str) -> Option<&[u8]> {
        let entry = self.manifest.sections.iter().find(|s| s.name == name)?;
        format::section_slice(entry, &self.data)
    }

    /// Every section as `(name, bytes)`, in the order they were written.
    pub fn sections(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        self.manifest
            .sections
            .iter()
            .filter_map(|s| Some((s.name.as_str(), format::section_slice(s, &self.data)?)))
    }
}

/// The objects in the checkpoints folder.
#[derive(Debug, Default)]
struct Listing {
    /// Checkpoint ids that have a manifest, newest first.
    manifests: Vec<String>,
    /// Ids of data objects, with their last modification time.
    data: Vec<(String, chrono::DateTime<chrono::Utc>)>,
}

/// A checkpoint store: a local directory or an S3 bucket and prefix, shared by the members of a
/// consumer group. See the [module documentation](self) for the layout and guarantees.
#[derive(Debug)]
pub struct CheckpointStore {
    /// The object store.
    store: Arc<dyn ObjectStore>,
    /// `{prefix}/checkpoints`.
    dir: Path,
    /// How many checkpoints retention keeps (overall, and per section name).
    keep: usize,
    /// The store as shown to people.
    url: String,
    /// Data objects without manifest older than this are deleted by retention.
    stray_age: Duration,
    /// Section names of the manifests retention has read (manifests never change).
    contents: Mutex<HashMap<String, Contents>>,
}

impl CheckpointStore {
    /// Opens the checkpoint store at `url` (nothing is read or written yet; a local directory is
    /// created if missing).
    ///
    /// `url` is a local path, `file:///abs/dir`, or `s3://bucket/prefix` (the prefix may be
    /// empty). For S3 the settings come from the `AWS_*` environment (`AWS_ENDPOINT`,
    /// `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ALLOW_HTTP`, ...) and
    /// `options` overrides them: keys are object_store's S3 configuration names with or without
    /// `aws_` (`endpoint`, `region`, `access_key_id`, `secret_access_key`, `session_token`,
    /// `allow_http`, ...). Options are refused for a local directory. Requests that fail
    /// transiently are retried with object_store's default policy (up to 10 times, with backoff,
    /// for at most 3 minutes).
    ///
    /// `keep` (at least 1) is how many checkpoints retention keeps: the newest `keep` overall,
    /// plus the newest `keep` of every section name.
    pub fn open(
        url: &str,
        options: &BTreeMap<String, String>,
        keep: usize,
    ) -> Result<Self, StoreError> {
        let config = |message: String| StoreError::Config {
            url: url.to_string(),
            message,
        };
        if keep == 0 {
            return Err(config(
                "keep must be at least 1 (the number of checkpoints retained)".into(),
            ));
        }
        let (store, prefix, shown) = open_location(url, options)?;
        Ok(Self {
            store,
            dir: prefix.join(CHECKPOINTS_DIR),
            keep,
            url: shown,
            stray_age: STRAY_DATA_AGE,
            contents: Mutex::new(HashMap::new()),
        })
    }

    /// The store, for messages: `file:///var/lib/vigil/checkpoints`, `s3://bucket/prefix`, or
    /// for an S3-compatible server `s3://bucket/prefix (endpoint http://minio:9000)`.
    pub fn describe(&self) -> String {
        self.url.clone()
    }

    /// How many checkpoints retention keeps.
    pub fn keep(&self) -> usize {
        self.keep
    }

    fn manifest_path(&self, id: &str) -> Path {
        self.dir.clone().join(format!("{id}{MANIFEST_SUFFIX}"))
    }

    fn data_path(&self, id: &str) -> Path {
        self.dir.clone().join(format!("{id}{DATA_SUFFIX}"))
    }

    /// Writes a checkpoint of `sections` and `meta` for `member`, then applies retention.
    ///
    /// Section names must be unique and not empty. `member` is kept as given in the manifest;
    /// in the id it is reduced to `A-Z a-z 0-9 . _ -` (other characters become `_`). Retention
    /// problems are logged as warnings and do not fail the write.
    pub async fn write(
        &self,
        member: &str,
        sections: Vec<Section>,
        meta: serde_json::Value,
    ) -> Result<Written, StoreError> {
        let started = Instant::now();
        let (data, entries) = format::build_data(&sections)?;
        drop(sections);
        let created_ms = chrono::Utc::now().timestamp_millis();
        let id = format::next_id(created_ms, &format::sanitise_member(member));
        let data_path = self.data_path(&id);
        let manifest = Manifest {
            format_version: FORMAT_VERSION,
            id: id.clone(),
            member: member.to_string(),
            created_ms,
            data: format!("{id}{DATA_SUFFIX}"),
            data_len: data.len() as u64,
            data_checksum: xxh3_64(&data),
            sections: entries,
            meta,
        };
        let manifest_bytes =
            format::encode_manifest(&manifest).map_err(|source| StoreError::Encode {
                id: id.clone(),
                source,
            })?;
        let bytes = (data.len() + manifest_bytes.len()) as u64;

        self.store
            .put(&data_path, PutPayload::from(data))
            .await
            .map_err(|source| self.write_error(&data_path, source))?;
        let manifest_path = self.manifest_path(&id);
        if let Err(source) = self
            .store
            .put(&manifest_path, PutPayload::from(manifest_bytes))
            .await
        {
            // Without its manifest the data object is debris; retention would remove it later.
            if let Err(e) = self.store.delete(&data_path).await {
                debug!(object = %data_path, error = %e, "could not remove the data of a failed checkpoint");
            }
            return Err(self.write_error(&manifest_path, source));
        }
        let duration = started.elapsed();
        self.contents_cache().insert(
            id.clone(),
            Contents::Sections(manifest.sections.iter().map(|s| s.name.clone()).collect()),
        );

        if let Err(e) = self.retain().await {
            warn!(store = %self.url, error = %e, "checkpoint retention failed; old checkpoints are left in place for now");
        }
        Ok(Written {
            id,
            bytes,
            duration,
        })
    }

    /// The ids of all checkpoints (those with a manifest, valid or not), newest first.
    pub async fn manifests(&self) -> Result<Vec<String>, StoreError> {
        Ok(self.list().await?.manifests)
    }

    /// The newest valid checkpoint for which `want(&manifest)` is true, and the ids of the newer
    /// checkpoints that were skipped because they are damaged.
    ///
    /// A checkpoint whose manifest or data is truncated, fails a checksum, does not parse, or
    /// whose data object is missing is skipped with a warning naming it, and the previous one is
    /// tried. Checkpoints for which `want` is false are passed over silently (their data is not
    /// read). `Ok(None)` if no checkpoint qualifies.
    ///
    /// A checkpoint in a format this build does not read (written by a newer Vigil) stops the
    /// search with [`StoreError::Incompatible`]: falling back past it would silently go back in
    /// time. An object that is listed but cannot be read for another reason (store unreachable,
    /// access refused) is an error too ([`StoreError::Read`]), not a skip; a manifest that
    /// disappears between the listing and the read (another member's retention) is passed over.
    pub async fn load_newest(
        &self,
        want: impl Fn(&Manifest) -> bool,
    ) -> Result<Option<(Loaded, Vec<String>)>, StoreError> {
        let mut skipped = Vec::new();
        for id in self.manifests().await? {
            let manifest_path = self.manifest_path(&id);
            let Some(bytes) = self.read(&manifest_path).await? else {
                debug!(checkpoint = %id, object = %manifest_path, "checkpoint deleted while loading; passing over it");
                continue;
            };
            let manifest = match format::decode_manifest(&id, &bytes) {
                Decoded::Manifest(m) => m,
                Decoded::Incompatible { found } => {
                    return Err(StoreError::Incompatible {
                        id,
                        path: manifest_path.to_string(),
                        store: self.url.clone(),
                        found,
                        supported: FORMAT_VERSION,
                    })
                }
                Decoded::Corrupt(reason) => {
                    self.warn_skip(&id, &manifest_path, &reason);
                    skipped.push(id);
                    continue;
                }
            };
            if !want(&manifest) {
                continue;
            }
            let data_path = self.dir.clone().join(manifest.data.as_str());
            let data = match self.read(&data_path).await? {
                Some(data) => data,
                None => {
                    self.warn_skip(&id, &data_path, "its data object is missing");
                    skipped.push(id);
                    continue;
                }
            };
            if let Err(reason) = format::verify_data(&manifest, &data) {
                self.warn_skip(&id, &data_path, &reason);
                skipped.push(id);
                continue;
            }
            return Ok(Some((Loaded { manifest, data }, skipped)));
        }
        if !skipped.is_empty() {
            warn!(
                store = %self.url,
                skipped = ?skipped,
                "no usable checkpoint is left after skipping {} damaged one(s); starting without a checkpoint",
                skipped.len()
            );
        }
        Ok(None)
    }

    fn warn_skip(&self, id: &str, object: &Path, reason: &str) {
        warn!(
            checkpoint = %id,
            object = %object,
            store = %self.url,
            "checkpoint {id} is unusable ({object}: {reason}); falling back to the previous checkpoint"
        );
    }

    fn write_error(&self, path: &Path, source: object_store::Error) -> StoreError {
        StoreError::Write {
            store: self.url.clone(),
            path: path.to_string(),
            source,
        }
    }

    fn contents_cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, Contents>> {
        self.contents.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads a whole object; `Ok(None)` if it does not exist.
    async fn read(&self, path: &Path) -> Result<Option<Vec<u8>>, StoreError> {
        let result = match self.store.get(path).await {
            Ok(r) => r.bytes().await,
            Err(e) => Err(e),
        };
        match result {
            Ok(bytes) => Ok(Some(bytes.into())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(source) => Err(StoreError::Read {
                store: self.url.clone(),
                path: path.to_string(),
                source,
            }),
        }
    }

    /// Lists the checkpoints folder.
    async fn list(&self) -> Result<Listing, StoreError> {
        let objects: Vec<object_store::ObjectMeta> = self
            .store
            .list(Some(&self.dir))
            .try_collect()
            .await
            .map_err(|source| StoreError::List {
                store: self.url.clone(),
                path: self.dir.to_string(),
                source,
            })?;
        let mut listing = Listing::default();
        for object in objects {
            // Only direct children of the folder; anything else is not ours.
            if object.location.parts_count() != self.dir.parts_count() + 1 {
                continue;
            }
            let Some(name) = object.location.filename() else {
                continue;
            };
            if let Some(id) = name.strip_suffix(MANIFEST_SUFFIX) {
                listing.manifests.push(id.to_string());
            } else if let Some(id) = name.strip_suffix(DATA_SUFFIX) {
                listing.data.push((id.to_string(), object.last_modified));
            }
        }
        listing.manifests.sort_unstable_by(|a, b| b.cmp(a));
        Ok(listing)
    }
}

/// Opens the store a location URL names: a local path, `file:///abs/dir` or
/// `s3://bucket/prefix`. Returns the store, the prefix inside it, and the location as shown.
pub fn open_location(
    url: &str,
    options: &BTreeMap<String, String>,
) -> Result<(Arc<dyn ObjectStore>, Path, String), StoreError> {
    let config = |message: String| StoreError::Config {
        url: url.to_string(),
        message,
    };
    Ok(match url.split_once("://") {
                Some(("s3", rest)) => open_s3(url, rest, options)?,
                Some(("file", dir)) if dir.starts_with('/') => open_local(url, dir, options)?,
                Some(("file", _)) => {
                    return Err(config(
                        "a file URL needs an absolute path: file:///var/lib/vigil/checkpoints"
                            .into(),
                    ))
                }
                Some(_) => return Err(config(
                    "unsupported scheme; use a local path, file:///abs/dir or s3://bucket/prefix"
                        .into(),
                )),
                None if url.is_empty() => {
                    return Err(config(
                        "the location is empty; give a local path or s3://bucket/prefix".into(),
                    ))
                }
                None => open_local(url, url, options)?,
            })
}
