//! Retention: which checkpoints to delete after a write.

use std::collections::{HashMap, HashSet};

use object_store::path::Path;
use object_store::ObjectStoreExt;
use tracing::{debug, warn};

use super::{format, CheckpointStore, StoreError};

/// What retention knows about one manifest.
#[derive(Debug, Clone)]
pub(super) enum Contents {
    /// Intact, with these section names.
    Sections(Vec<String>),
    /// Damaged: holds nothing worth keeping beyond the newest `keep`.
    Damaged,
    /// Could not be read or understood this time: kept.
    Unknown,
}

impl CheckpointStore {
    /// What retention knows of manifest `id`, reading it if it is not cached.
    async fn contents_of(&self, id: &str) -> Contents {
        if let Some(c) = self.contents_cache().get(id) {
            return c.clone();
        }
        let path = self.manifest_path(id);
        let contents = match self.read(&path).await {
            Ok(Some(bytes)) => match format::section_names_loose(&bytes) {
                Ok(Some(names)) => Contents::Sections(names),
                Ok(None) => Contents::Unknown,
                Err(()) => Contents::Damaged,
            },
            Ok(None) => return Contents::Unknown,
            Err(e) => {
                debug!(checkpoint = %id, error = %e, "retention could not read a manifest; keeping it");
                return Contents::Unknown;
            }
        };
        if !matches!(contents, Contents::Unknown) {
            self.contents_cache()
                .insert(id.to_string(), contents.clone());
        }
        contents
    }

    /// Deletes the checkpoints retention does not keep, and old data objects without manifest.
    /// Per-object failures are warnings; a failed listing is an error.
    pub(super) async fn retain(&self) -> Result<(), StoreError> {
        let listing = self.list().await?;
        let mut contents = Vec::with_capacity(listing.manifests.len());
        for id in &listing.manifests {
            contents.push((id.as_str(), self.contents_of(id).await));
        }
        let doomed = retention_victims(&contents, self.keep);
        for id in &doomed {
            // Manifest first: without it the checkpoint no longer exists, whatever happens next.
            if self.delete(&self.manifest_path(id)).await {
                self.delete(&self.data_path(id)).await;
            }
        }

        let with_manifest: HashSet<&str> = listing.manifests.iter().map(String::as_str).collect();
        let now = chrono::Utc::now();
        let mut strays = 0;
        for (id, modified) in &listing.data {
            let age = now
                .signed_duration_since(*modified)
                .to_std()
                .unwrap_or_default();
            if !with_manifest.contains(id.as_str()) && age >= self.stray_age {
                self.delete(&self.data_path(id)).await;
                strays += 1;
            }
        }

        let mut cache = self.contents_cache();
        cache.retain(|id, _| with_manifest.contains(id.as_str()));
        for id in &doomed {
            cache.remove(*id);
        }
        drop(cache);
        if !doomed.is_empty() || strays > 0 {
            debug!(store = %self.url, deleted = doomed.len(), strays, "checkpoint retention");
        }
        Ok(())
    }

    /// Deletes one object; a missing object counts as deleted. Failures are logged, not returned.
    async fn delete(&self, path: &Path) -> bool {
        match self.store.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => true,
            Err(e) => {
                warn!(store = %self.url, object = %path, error = %e, "could not delete an old checkpoint object");
                false
            }
        }
    }
}

/// The ids retention deletes, given every manifest newest first with what it contains: those
/// neither among the newest `keep` overall nor among the newest `keep` holding one of their
/// section names. Manifests of unknown contents are always kept.
pub(super) fn retention_victims<'a>(
    manifests: &[(&'a str, Contents)],
    keep: usize,
) -> Vec<&'a str> {
    let mut per_section: HashMap<&str, usize> = HashMap::new();
    let mut victims = Vec::new();
    for (rank, (id, contents)) in manifests.iter().enumerate() {
        let mut kept = rank < keep;
        match contents {
            Contents::Unknown => kept = true,
            Contents::Damaged => {}
            Contents::Sections(names) => {
                for name in names {
                    let seen = per_section.entry(name.as_str()).or_insert(0);
                    if *seen < keep {
                        kept = true;
                    }
                    *seen += 1;
                }
            }
        }
        if !kept {
            victims.push(*id);
        }
    }
    victims
}
