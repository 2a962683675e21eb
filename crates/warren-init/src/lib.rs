//! warren-init: PID 1 inside every Warren sandbox.
//!
//! The node starts init by `clone`-ing into new mount, PID, UTS, IPC and
//! network namespaces and exec'ing a sealed memfd copy of its own binary, so
//! no binary from the image is needed and nothing in the sandbox can modify
//! the host's executable. Any binary that embeds the runtime calls
//! [`run_if_init`] first thing in `main`; in an init process it never returns.
//!
//! Init, in order (see `setup.rs`): joins the sandbox's cgroups and unshares
//! a cgroup namespace; builds the root filesystem (idmapped read-only image
//! layers under an overlay, binds, `/proc`, a minimal `/dev`, `/sys`
//! read-only, `/tmp`); `pivot_root`s into it; sets the hostname; brings `lo`
//! up; then enters the sandbox's user namespace as its root (an unprivileged
//! host id range) and makes itself non-dumpable. Every namespace except the
//! user namespace is owned by the host's initial user namespace, so the
//! sandbox's root holds no capability over its own mounts, network or
//! hostname.
//!
//! Right after setup, init installs the default seccomp policy on itself
//! (see `seccomp.rs` and `docs/seccomp.md`); every process it starts
//! inherits the filter and gets `no_new_privs`.
//!
//! After setup init serves the control socket (see `server.rs`): execs with
//! descriptor-passed stdio or a PTY, signals, exit reports, zombie reaping.
//! When the main command exits, init records its status in the result file
//! and exits, which makes the kernel kill everything left in the sandbox.
//!
//! The same executable is also the sandbox's **file agent** (see
//! `agent/`): init starts it like any exec, as the requesting user, but
//! with `execveat` of init's own sealed executable, and it serves file
//! operations over its stdin/stdout inside the sandbox. [`run_if_init`]
//! dispatches both modes.
//!
//! Must not: trust anything from inside the sandbox, block on one client, or
//! keep descriptors that sandbox processes could inherit (all are CLOEXEC).

mod agent;
mod logring;
mod restore;
pub mod seccomp;
mod server;
mod setup;
mod spawn;

use std::ffi::OsStr;

use warren_proto::{INIT_ARGV0, INIT_ENV_MARKER};

/// If this process was started as a sandbox's init, runs init and exits the
/// process with init's exit code. Otherwise returns immediately.
///
/// Call it as the first statement of `main` in every binary that starts
/// sandboxes (the node re-executes that same binary as init).
///
/// It also runs the file agent (and exits) when this process was started as
/// one (argv[0] [`warren_proto::agent::AGENT_ARGV0`] and the agent's
/// environment marker), so every binary that can be init can be the agent.
pub fn run_if_init() {
    let mut args = std::env::args_os();
    let argv0 = args.next();
    if argv0.as_deref() == Some(OsStr::new(warren_proto::agent::AGENT_ARGV0))
        && std::env::var_os(warren_proto::agent::AGENT_ENV_MARKER).is_some()
    {
        std::process::exit(agent::main());
    }
    if argv0.as_deref() == Some(OsStr::new(warren_proto::RESTORE_ARGV0))
        && std::env::var_os(INIT_ENV_MARKER).is_some()
    {
        std::process::exit(restore::main());
    }
    if argv0.as_deref() != Some(OsStr::new(INIT_ARGV0)) {
        return;
    }
    if std::env::var_os(INIT_ENV_MARKER).is_none() {
        return;
    }
    let code = server::main();
    std::process::exit(code);
}
