//! The store's error type.

use std::io;
use std::path::PathBuf;

use gix_hash::ObjectId;

use crate::index::IndexError;
use crate::journal::JournalError;
use crate::name::NameError;

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A filesystem operation failed.
    #[error("{context} {}: {source}", path.display())]
    Io {
        /// What was being done.
        context: &'static str,
        /// On which path.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The ref journal failed.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The index failed.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// gix failed to read or write pack data.
    #[error("{context}: {source:#}")]
    Git {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: gix_error::Error,
    },
    /// An object that must exist does not.
    #[error("missing object {0}")]
    MissingObject(ObjectId),
    /// An object exists but has the wrong type or does not parse.
    #[error("object {id} is malformed: {reason}")]
    BadObject {
        /// The object.
        id: ObjectId,
        /// What is wrong.
        reason: String,
    },
    /// Received or stored data violates an invariant.
    #[error("{0}")]
    Invalid(String),
    /// A repository name is not valid.
    #[error(transparent)]
    Name(#[from] NameError),
    /// A repository of that name exists already.
    #[error("repository {0} already exists")]
    RepoExists(String),
    /// No repository of that name.
    #[error("repository {0} not found")]
    RepoNotFound(String),
    /// The data directory was written by a newer version of codestorage.
    #[error(
        "data directory format {found} is newer than this codestorage reads (format {supported}): run a newer codestorage on it, or restore a backup taken with this version"
    )]
    FormatTooNew {
        /// Format found on disk.
        found: u32,
        /// Newest format this binary reads.
        supported: u32,
    },
    /// The operation was interrupted (shutdown or client gone).
    #[error("interrupted")]
    Interrupted,
}

impl StoreError {
    /// Wrap an I/O error with what was being done and where.
    pub fn io(
        context: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> StoreError {
        let path = path.into();
        move |source| StoreError::Io {
            context,
            path,
            source,
        }
    }

    /// Wrap a gix error with what was being done.
    pub fn git(context: impl Into<String>) -> impl FnOnce(gix_error::Error) -> StoreError {
        let context = context.into();
        move |source| StoreError::Git { context, source }
    }
}

/// The store's result type.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
