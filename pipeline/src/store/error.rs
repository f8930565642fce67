//! Errors of the checkpoint store.

/// What went wrong in the checkpoint store, and where.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store URL, an option or `keep` is not usable.
    #[error("checkpoint store `{url}`: {message}")]
    Config {
        /// The store URL as given.
        url: String,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// The local checkpoint directory could not be created.
    #[error("cannot create the checkpoint directory {path}: {source}")]
    CreateDir {
        /// The directory.
        path: String,
        /// The file system error.
        source: std::io::Error,
    },
    /// object_store refused to open the store.
    #[error("cannot open the checkpoint store `{url}`: {source}")]
    Open {
        /// The store URL as given.
        url: String,
        /// The object store error.
        source: object_store::Error,
    },
    /// The checkpoint folder could not be listed.
    #[error("cannot list {path} in the checkpoint store {store}: {source}")]
    List {
        /// The store ([`describe`](super::CheckpointStore::describe)).
        store: String,
        /// The folder listed.
        path: String,
        /// The object store error.
        source: object_store::Error,
    },
    /// An object could not be written.
    #[error("cannot write {path} in the checkpoint store {store}: {source}")]
    Write {
        /// The store ([`describe`](super::CheckpointStore::describe)).
        store: String,
        /// The object.
        path: String,
        /// The object store error.
        source: object_store::Error,
    },
    /// An object exists (it was listed) but could not be read, for a reason other than its
    /// contents: the store is unreachable or refuses access. Not skipped, because falling back to
    /// an older checkpoint over a transient error would silently lose state.
    #[error("cannot read {path} in the checkpoint store {store}: {source}")]
    Read {
        /// The store ([`describe`](super::CheckpointStore::describe)).
        store: String,
        /// The object.
        path: String,
        /// The object store error.
        source: object_store::Error,
    },
    /// The sections given to [`write`](super::CheckpointStore::write) cannot be stored.
    #[error("invalid checkpoint sections: {message}")]
    InvalidSection {
        /// What is wrong.
        message: String,
    },
    /// The manifest could not be serialised (its metadata is not representable as JSON).
    #[error("cannot encode the manifest of checkpoint {id}: {source}")]
    Encode {
        /// The checkpoint id.
        id: String,
        /// The serde_json error.
        source: serde_json::Error,
    },
    /// The newest checkpoint was written in a format this build does not read.
    #[error(
        "checkpoint {id} ({path} in {store}) is in checkpoint format {found}, and this build of \
         Vigil reads format {supported}; run a Vigil version that reads format {found}, or move \
         the checkpoints in {store} aside to start from the input"
    )]
    Incompatible {
        /// The checkpoint id.
        id: String,
        /// Its manifest object.
        path: String,
        /// The store ([`describe`](super::CheckpointStore::describe)).
        store: String,
        /// The format version it was written in.
        found: u32,
        /// The format version this build reads ([`FORMAT_VERSION`](super::FORMAT_VERSION)).
        supported: u32,
    },
}
