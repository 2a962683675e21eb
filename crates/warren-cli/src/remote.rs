//! Shared plumbing for the subcommands that talk to a Warren server: the
//! client from the environment, a small async runtime, and argument parsers.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use warren_client::Client;
use warren_proto::api::{Sandbox, Termination, TerminationReason};

/// `println!` that reports failure (a closed pipe) instead of panicking;
/// evaluates to `std::io::Result<()>`.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::remote::write_stdout(::std::format_args!($($arg)*))
    };
}
pub(crate) use outln;

/// Writes one line to stdout.
pub fn write_stdout(args: std::fmt::Arguments<'_>) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_fmt(args)?;
    out.write_all(b"\n")
}

/// The API client: `WARREN_URL`/`WARREN_TOKEN`, else the admin token under
/// `data_dir` (or `/var/lib/warren`).
pub fn client(data_dir: &Path) -> Result<Client> {
    Ok(Client::from_env_in(Some(data_dir))?)
}

/// Runs `fut` to completion on a single-threaded runtime.
pub fn block_on<F: std::future::Future>(fut: F) -> Result<F::Output> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    Ok(rt.block_on(fut))
}

/// Parses repeated `KEY=VALUE` flags (`--env`, `--tag`) into a map; later
/// keys win.
pub fn parse_pairs(flag: &str, pairs: &[String]) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for kv in pairs {
        let Some((k, v)) = kv.split_once('=') else {
            bail!("--{flag} {kv:?}: expected KEY=VALUE");
        };
        if k.is_empty() {
            bail!("--{flag} {kv:?}: the key is empty");
        }
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

/// The wire name of a termination reason (`exited`, `timeout`, ...).
pub fn reason_str(r: TerminationReason) -> &'static str {
    match r {
        TerminationReason::Exited => "exited",
        TerminationReason::Timeout => "timeout",
        TerminationReason::IdleTimeout => "idle_timeout",
        TerminationReason::OomKilled => "oom_killed",
        TerminationReason::Terminated => "terminated",
        TerminationReason::NodeRestart => "node_restart",
        TerminationReason::Error => "error",
    }
}

/// `exited (exit code 3)`, `terminated`, `error: <detail>`.
pub fn describe_termination(t: &Termination) -> String {
    let mut s = reason_str(t.reason).to_string();
    if let Some(code) = t.exit_code {
        s.push_str(&format!(" (exit code {code})"));
    }
    if t.reason == TerminationReason::Error {
        if let Some(d) = &t.detail {
            s.push_str(&format!(": {d}"));
        }
    }
    s
}

/// The process exit code that stands for an ended sandbox: its recorded
/// code when there is one (an exit, or 137 for an OOM kill), else 1.
pub fn exit_code_of(sb: &Sandbox) -> i32 {
    match &sb.termination {
        Some(Termination {
            exit_code: Some(c), ..
        }) => *c,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs() {
        let m = parse_pairs("env", &["A=1".into(), "B=x=y".into(), "A=2".into()]).unwrap();
        assert_eq!(m["A"], "2");
        assert_eq!(m["B"], "x=y");
        assert!(parse_pairs("tag", &["nope".into()]).is_err());
        assert!(parse_pairs("tag", &["=v".into()]).is_err());
    }

    #[test]
    fn termination_text() {
        let t = Termination {
            reason: TerminationReason::Exited,
            exit_code: Some(3),
            detail: None,
        };
        assert_eq!(describe_termination(&t), "exited (exit code 3)");
        let t = Termination {
            reason: TerminationReason::Terminated,
            exit_code: None,
            detail: Some("by token x".into()),
        };
        assert_eq!(describe_termination(&t), "terminated");
    }
}
