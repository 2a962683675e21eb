//! The control plane's state store: workspaces, API tokens and sandbox
//! records, in an embedded SQLite database.
//!
//! # Purpose
//!
//! `warren serve` keeps everything it must remember across restarts here:
//! which workspaces exist, which tokens may act for them, and every
//! sandbox's spec, tags, lifecycle state, deadlines and termination
//! reason. [`Store`] is the only way in; its methods are the operations the
//! server needs (insert, transition, look up, list, sweep), not generic
//! SQL access.
//!
//! # What it must not do
//!
//! - Store a token's plaintext. Only its SHA-256 is kept; the plaintext
//!   exists once, in the [`NewToken`] returned at creation.
//! - Reveal another workspace's data. Every read that serves an API
//!   request takes the caller's workspace id, and another workspace's
//!   sandbox id yields `None`, never an error that shows it exists.
//! - Log tenants' environment variables or secrets: [`SandboxSpec`] and
//!   [`NewToken`] redact them in `Debug`.
//! - Run processes or touch sandboxes: it records what the node did.
//!
//! # Invariants
//!
//! - A sandbox name is unique among its workspace's sandboxes that are not
//!   `terminated`, and free for reuse once the holder terminates. This is
//!   enforced by the database itself with a partial unique index
//!   (`sandboxes_live_name ON sandboxes (workspace_id, name) WHERE state
//!   <> 'terminated'`). Partial indexes have the same syntax and meaning in
//!   SQLite and PostgreSQL, so this is portable; and because the index
//!   follows the `state` column, terminating a sandbox frees its name in
//!   the same row update, with no second table to keep consistent.
//! - Lifecycle states only move forward. The first caller to end a
//!   sandbox ([`Store::begin_termination`] or [`Store::finish_sandbox`])
//!   fixes its termination reason; later callers get `false` and change
//!   nothing.
//! - Tags live in two places: the `tags` JSON column (returned with the
//!   record) and the `sandbox_tags` table (indexed for filtering, with
//!   copies of the sandbox's immutable `workspace_id` and `created_at` so
//!   a tag filter walks its index in page order). Both are written in the
//!   same transaction.
//! - Listing uses keyset pagination on `(created_at DESC, id DESC)`; every
//!   filter combination is served in index order without sorting, so a
//!   page costs about the same at any depth and workspace size.
//! - Timestamps are unix milliseconds from the store's [`Clock`].
//!
//! # Portability
//!
//! The schema and queries are written to run on PostgreSQL too (a later
//! issue adds it for cluster mode): TEXT ids, BIGINT millisecond
//! timestamps, JSON as TEXT, numbered `$n` parameters, enums as TEXT with
//! CHECK constraints, partial indexes and `UPDATE ... RETURNING` (both
//! engines have them). The SQLite-specific parts are all in `store.rs`:
//! the connection pragmas and `BEGIN IMMEDIATE` for write transactions.
//! No `sqlx` type is part of the public API.

mod auth;
mod clock;
mod cursor;
mod error;
mod ids;
mod memory;
mod network;
mod sandbox;
mod snapshot;
mod store;
mod types;

#[cfg(test)]
mod tests;

pub use auth::{BOOTSTRAP_TOKEN_NAME, DEFAULT_WORKSPACE_NAME, LAST_USED_GRANULARITY_MS};
pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{Result, StoreError};
pub use ids::{
    new_memory_snapshot_id, new_sandbox_id, new_token_id, new_workspace_id, TOKEN_PREFIX,
    TOKEN_RANDOM_LEN,
};
pub use sandbox::MAX_TIMEOUT_SECS;
pub use store::{Store, BUSY_TIMEOUT};
pub use types::{
    ConnectTokenRecord, ExpiredSandbox, ExposedPort, ImageMountSpec, ListFilter,
    MemorySnapshotRecord, NetworkSpec, NewSandbox, NewToken, Page, PortKind, Principal,
    ReadinessProbe, RelayPort, SandboxRecord, SandboxSpec, SandboxState, Termination,
    TerminationReason, TokenInfo, UnknownVariant, Workspace, DEFAULT_PAGE_LIMIT, LOCAL_NODE_ID,
    MAX_PAGE_LIMIT,
};
