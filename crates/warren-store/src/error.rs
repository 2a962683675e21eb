//! The error type of this crate.

use std::io;
use std::path::PathBuf;

/// Errors from store operations.
///
/// Storage failures are named for the operation that failed and carry the
/// database error as their source. Domain failures (a name already taken, an
/// unknown id, a bad argument) have their own variants. [`StoreError::code`]
/// maps every variant to one of four stable codes that the API layer can
/// expose; the `Display` text and the source chain are internal detail and
/// must be logged, not returned to clients.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database file could not be created.
    #[error("failed to create database file {path}")]
    CreateDatabaseFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// Connecting to (or configuring) the database failed.
    #[error("failed to open database {path}")]
    OpenDatabase {
        path: PathBuf,
        #[source]
        source: sqlx::Error,
    },

    /// Applying the schema migrations failed.
    #[error("failed to run schema migrations")]
    RunMigrations {
        #[source]
        source: sqlx::migrate::MigrateError,
    },

    /// A stored row could not be turned back into its type (corrupt or
    /// written by an incompatible version).
    #[error("failed to decode {table} row {id:?}: {reason}")]
    DecodeRow {
        table: &'static str,
        id: String,
        reason: String,
    },

    /// The first-start bootstrap failed.
    #[error("failed to bootstrap the default workspace")]
    Bootstrap {
        #[source]
        source: sqlx::Error,
    },

    /// Inserting a workspace failed.
    #[error("failed to create workspace {name:?}")]
    CreateWorkspace {
        name: String,
        #[source]
        source: sqlx::Error,
    },

    /// Reading workspaces failed.
    #[error("failed to read workspaces")]
    ReadWorkspaces {
        #[source]
        source: sqlx::Error,
    },

    /// Inserting a token failed.
    #[error("failed to create token in workspace {workspace_id}")]
    CreateToken {
        workspace_id: String,
        #[source]
        source: sqlx::Error,
    },

    /// Reading tokens failed.
    #[error("failed to list tokens of workspace {workspace_id}")]
    ListTokens {
        workspace_id: String,
        #[source]
        source: sqlx::Error,
    },

    /// Revoking a token failed.
    #[error("failed to revoke token {token_id}")]
    RevokeToken {
        token_id: String,
        #[source]
        source: sqlx::Error,
    },

    /// Looking a token up by its hash failed.
    #[error("failed to authenticate token")]
    Authenticate {
        #[source]
        source: sqlx::Error,
    },

    /// Inserting a sandbox failed.
    #[error("failed to insert sandbox {id}")]
    InsertSandbox {
        id: String,
        #[source]
        source: sqlx::Error,
    },

    /// A state transition or timestamp update of a sandbox failed.
    #[error("failed to update sandbox {id} ({operation})")]
    UpdateSandbox {
        id: String,
        operation: &'static str,
        #[source]
        source: sqlx::Error,
    },

    /// Replacing a sandbox's tags failed.
    #[error("failed to set tags of sandbox {id}")]
    SetTags {
        id: String,
        #[source]
        source: sqlx::Error,
    },

    /// Reading one sandbox failed.
    #[error("failed to read sandbox {key:?}")]
    GetSandbox {
        key: String,
        #[source]
        source: sqlx::Error,
    },

    /// Reading a list of sandboxes failed.
    #[error("failed to list sandboxes ({operation})")]
    ListSandboxes {
        operation: &'static str,
        #[source]
        source: sqlx::Error,
    },

    /// A workspace name is already in use.
    #[error("workspace name {name:?} is already taken")]
    WorkspaceNameTaken { name: String },

    /// A sandbox name is already used by a live sandbox of the workspace.
    #[error("sandbox name {name:?} is already taken in workspace {workspace_id}")]
    SandboxNameTaken { workspace_id: String, name: String },

    /// A sandbox id is already in use.
    #[error("sandbox id {id} already exists")]
    SandboxIdTaken { id: String },

    /// The workspace does not exist.
    #[error("workspace {id} not found")]
    WorkspaceNotFound { id: String },

    /// The token does not exist in the given workspace.
    #[error("token {id} not found")]
    TokenNotFound { id: String },

    /// The sandbox does not exist in the given workspace.
    #[error("sandbox {id} not found")]
    SandboxNotFound { id: String },

    /// An argument failed validation.
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
}

impl StoreError {
    /// A stable, machine-readable code for this error: `name_conflict`,
    /// `not_found`, `invalid_argument` or `storage_error`.
    pub fn code(&self) -> &'static str {
        match self {
            StoreError::WorkspaceNameTaken { .. }
            | StoreError::SandboxNameTaken { .. }
            | StoreError::SandboxIdTaken { .. } => "name_conflict",
            StoreError::WorkspaceNotFound { .. }
            | StoreError::TokenNotFound { .. }
            | StoreError::SandboxNotFound { .. } => "not_found",
            StoreError::InvalidArgument { .. } => "invalid_argument",
            StoreError::CreateDatabaseFile { .. }
            | StoreError::OpenDatabase { .. }
            | StoreError::RunMigrations { .. }
            | StoreError::DecodeRow { .. }
            | StoreError::Bootstrap { .. }
            | StoreError::CreateWorkspace { .. }
            | StoreError::ReadWorkspaces { .. }
            | StoreError::CreateToken { .. }
            | StoreError::ListTokens { .. }
            | StoreError::RevokeToken { .. }
            | StoreError::Authenticate { .. }
            | StoreError::InsertSandbox { .. }
            | StoreError::UpdateSandbox { .. }
            | StoreError::SetTags { .. }
            | StoreError::GetSandbox { .. }
            | StoreError::ListSandboxes { .. } => "storage_error",
        }
    }

    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        StoreError::InvalidArgument {
            field,
            reason: reason.into(),
        }
    }
}

/// Whether a database error is a unique-constraint violation (portable:
/// sqlx maps SQLite's and PostgreSQL's codes to the same kind).
pub(crate) fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// Whether a database error is a foreign-key violation.
pub(crate) fn is_foreign_key_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.is_foreign_key_violation())
}

/// Shorthand for results of this crate.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
