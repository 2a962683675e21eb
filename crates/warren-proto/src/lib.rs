//! warren-proto: the wire types Warren components exchange. No I/O here.
//!
//! - [`agent`]: the node ↔ in-sandbox file agent protocol (framed pipes).
//! - [`init`]: the node ↔ sandbox-init protocol (versioned, Unix sockets).
//! - [`log`]: the ring-file format of a main command's output.
//! - [`network`]: the API's networking bodies (tunnels, tokens, egress).
//! - [`relay`]: relay routes, connect-token claims, the node ↔ relay link.
//! - [`snapshot`]: the API's snapshot bodies (filesystem and directory
//!   snapshots into images, image mounts, memory snapshots, pause, fork).
//! - [`api`]: the public HTTP API's request and response bodies (`/v1`),
//!   with OpenAPI schemas; shared by the server, the Rust client and the CLI
//!   so they cannot drift apart.
//!
//! Invariants: every request type refuses unknown fields; every error the
//! API returns has a stable `code` listed in [`api::ErrorCode`].

pub mod agent;
pub mod api;
pub mod build;
pub mod init;
pub mod log;
pub mod network;
pub mod relay;
pub mod snapshot;

pub use init::*;
