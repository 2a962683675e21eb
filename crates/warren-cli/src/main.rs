//! `warren`: the command-line entry point. Parses arguments, sets up
//! logging, and calls into the libraries; one file per subcommand.

mod build;
mod files;
mod image;
mod local;
mod memory;
mod relay;
mod remote;
mod run;
mod sandbox;
mod serve;
mod snapshot;
mod stream;
mod term;
mod token;
mod tunnels;
mod workspace;

use clap::{Parser, Subcommand};

/// Warren: fast, isolated sandboxes for untrusted code.
#[derive(Parser)]
#[command(name = "warren", version, about)]
struct Cli {
    /// Where Warren keeps images and sandbox state.
    #[arg(
        long,
        global = true,
        env = "WARREN_DATA_DIR",
        default_value = "/var/lib/warren"
    )]
    data_dir: std::path::PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a command in a new sandbox, stream its output, exit with its code.
    Run(run::RunArgs),
    /// Serve the HTTP API with an embedded node and state (and, by default,
    /// sandbox networking and an in-process relay for tunnels).
    Serve(serve::ServeArgs),
    /// Run a relay in its own process: the HTTPS and raw TCP fronts of
    /// tunnels, for nodes that dial in (see docs/tunnels.md).
    Relay(relay::RelayArgs),
    /// Manage images.
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// Manage sandboxes on a Warren server (WARREN_URL, WARREN_TOKEN).
    #[command(subcommand)]
    Sandbox(sandbox::SandboxCommand),
    /// Manage memory snapshots (checkpoints made by `sandbox
    /// snapshot-memory`).
    #[command(subcommand)]
    MemorySnapshot(memory::MemorySnapshotCommand),
    /// Manage API tokens on a Warren server.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Manage workspaces on a Warren server (admin tokens only).
    #[command(subcommand)]
    Workspace(workspace::WorkspaceCommand),
}

fn main() {
    // Must come first: this binary is also the sandbox init when no
    // standalone `warren-init` is installed next to it.
    warren_init::run_if_init();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => usage_error(e),
    };
    let result = match cli.command {
        Command::Run(args) => run::run(&cli.data_dir, args),
        Command::Image(cmd) => image::run(&cli.data_dir, cmd),
        Command::Serve(args) => serve::run(&cli.data_dir, args),
        Command::Relay(args) => relay::run(&cli.data_dir, args),
        Command::Sandbox(cmd) => sandbox::run(&cli.data_dir, cmd),
        Command::MemorySnapshot(cmd) => memory::run(&cli.data_dir, cmd),
        Command::Token(cmd) => token::run(&cli.data_dir, cmd),
        Command::Workspace(cmd) => workspace::run(&cli.data_dir, cmd),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) if is_broken_pipe(&e) => {
            // Our reader went away (`warren sandbox ls | head`): stop quietly.
            std::process::exit(141);
        }
        Err(e) => {
            eprintln!("warren: {}", error_line(&e));
            std::process::exit(1);
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// One line for an error: its context chain, then the API error code when
/// the cause was a [`warren_client::ClientError`].
fn error_line(e: &anyhow::Error) -> String {
    let text = format!("{e:#}").replace('\n', " ");
    match e
        .chain()
        .find_map(|c| c.downcast_ref::<warren_client::ClientError>())
    {
        Some(ce) => format!("{text} ({})", ce.code()),
        None => text,
    }
}

/// Prints help and version as clap does; any other parse error as one line
/// on stderr, exiting 2.
fn usage_error(e: clap::Error) -> ! {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
    let rendered = e.render().to_string();
    let first = rendered
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("invalid arguments");
    let first = first.strip_prefix("error: ").unwrap_or(first);
    eprintln!("warren: {first}; try --help (usage)");
    std::process::exit(2);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("warren").chain(args.iter().copied()))
    }

    #[test]
    fn create_network_flags() {
        let cli = parse(&[
            "sandbox",
            "create",
            "--port",
            "3000",
            "--port",
            "3001:token",
            "--h2-port",
            "50051",
            "--tcp-port",
            "5432",
            "--allow-cidr",
            "203.0.113.0/24",
            "--ready-tcp",
            "3000",
            "--wait-ready",
            "--",
            "npm",
            "run",
            "dev",
        ])
        .unwrap();
        let Command::Sandbox(sandbox::SandboxCommand::Create(a)) = cli.command else {
            panic!("not a create");
        };
        let mut req = warren_proto::api::CreateSandboxRequest::default();
        a.network().apply(&mut req);
        assert_eq!(req.encrypted_ports.len(), 2);
        assert!(req.encrypted_ports[1].require_token());
        assert_eq!(req.h2_ports[0].port(), 50051);
        assert_eq!(req.unencrypted_ports, vec![5432]);
        assert_eq!(
            req.readiness_probe,
            Some(warren_proto::api::ReadinessProbe::Tcp(3000))
        );
        assert_eq!(a.wait_ready_secs(), Some(60));

        let cli = parse(&["sandbox", "create", "--wait-ready=5"]).unwrap();
        let Command::Sandbox(sandbox::SandboxCommand::Create(a)) = cli.command else {
            panic!("not a create");
        };
        assert_eq!(a.wait_ready_secs(), Some(5));
        assert!(a.network().is_empty());
    }

    #[test]
    fn memory_snapshot_flags() {
        let cli = parse(&[
            "sandbox",
            "create",
            "--auto-resume",
            "--on-idle",
            "pause",
            "--idle-timeout",
            "60",
        ])
        .unwrap();
        let Command::Sandbox(sandbox::SandboxCommand::Create(a)) = cli.command else {
            panic!("not a create");
        };
        let req = a.request().unwrap();
        assert!(req.auto_resume && !req.memory_snapshots);
        assert_eq!(req.on_idle, Some(warren_proto::api::OnIdle::Pause));
        assert!(req.wants_memory_snapshots());
        let cli = parse(&[
            "sandbox",
            "create",
            "--from-memory-snapshot",
            "msnap-abc",
            "--name",
            "copy",
        ])
        .unwrap();
        let Command::Sandbox(sandbox::SandboxCommand::Create(a)) = cli.command else {
            panic!("not a create");
        };
        let req = a.request().unwrap();
        assert_eq!(req.from_memory_snapshot.as_deref(), Some("msnap-abc"));
        assert!(warren_proto::api::validate_create(&req).is_ok());
        assert!(parse(&["sandbox", "create", "--memory-snapshots"]).is_ok());
        assert!(parse(&["sandbox", "create", "--on-idle", "sleep"]).is_err());

        for ok in [
            &["sandbox", "snapshot-memory", "sb-1", "--ttl", "60"][..],
            &["sandbox", "pause", "sb-1"],
            &["sandbox", "resume", "sb-1"],
            &["sandbox", "fork", "sb-1", "-n", "3"],
            &["sandbox", "fork", "sb-1"],
            &["sandbox", "ls", "--state", "paused"],
            &["memory-snapshot", "ls"],
            &["memory-snapshot", "ls", "--json"],
            &["memory-snapshot", "get", "msnap-a"],
            &["memory-snapshot", "rm", "msnap-a", "msnap-b"],
        ] {
            assert!(parse(ok).is_ok(), "{ok:?}");
        }
        let cli = parse(&["sandbox", "fork", "sb-1", "-n", "3"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Sandbox(sandbox::SandboxCommand::Fork(_))
        ));
        for bad in [
            &["sandbox", "fork", "sb-1", "-n", "0"][..],
            &["sandbox", "fork", "sb-1", "-n", "33"],
            &["sandbox", "pause"],
            &["memory-snapshot", "rm"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bad_network_flags_are_usage_errors() {
        for args in [
            &["sandbox", "create", "--allow-cidr", "10.0.0.1/8"][..],
            &["sandbox", "create", "--allow-cidr", "example.com"],
            &["sandbox", "create", "--port", "0"],
            &["sandbox", "create", "--port", "80:open"],
            &[
                "sandbox",
                "create",
                "--block-network",
                "--allow-cidr",
                "1.1.1.1",
            ],
            &[
                "sandbox",
                "create",
                "--ready-tcp",
                "1",
                "--ready-exec",
                "true",
            ],
            &["sandbox", "create", "--ready-exec", "'unclosed"],
            &["sandbox", "network", "sb-1", "--block", "--unblock"],
            &[
                "sandbox",
                "network",
                "sb-1",
                "--allow-cidr",
                "1.1.1.1",
                "--clear-allowlist",
            ],
            &["sandbox", "connect-token", "sb-1"],
            &["serve", "--relay-raw-ports", "31000-30000"],
            &["serve", "--relay-raw-ports", "30000"],
            &["serve", "--sandbox-cidr", "10.88.0.0/31"],
            &["serve", "--no-network", "--dns-upstream", "1.1.1.1"],
            &["serve", "--relay-link", "relay:7443"],
            &[
                "serve",
                "--no-relay",
                "--relay-link",
                "relay:7443",
                "--relay-ca",
                "c",
            ],
            &["serve", "--relay-cert", "c"],
            &["serve", "--relay-ca", "c"],
            &["relay", "--secrets", "s"],
        ] {
            let e = match parse(args) {
                Ok(_) => panic!("{args:?} parsed"),
                Err(e) => e,
            };
            assert_ne!(e.kind(), clap::error::ErrorKind::DisplayHelp, "{args:?}");
        }
    }

    #[test]
    fn other_network_commands_parse() {
        for args in [
            &["sandbox", "tunnels", "sb-1", "--ca-out", "ca.pem", "--json"][..],
            &[
                "sandbox",
                "connect-token",
                "sb-1",
                "--port",
                "3000",
                "--user-data",
                "u1",
                "--ttl",
                "60",
            ],
            &["sandbox", "connect-tokens", "sb-1", "--json"],
            &["sandbox", "revoke-token", "sb-1", "ct_1"],
            &["sandbox", "wait-ready", "sb-1", "--timeout", "30"],
            &["sandbox", "network", "sb-1"],
            &["sandbox", "network", "sb-1", "--block"],
            &[
                "sandbox",
                "network",
                "sb-1",
                "--allow-cidr",
                "1.1.1.1",
                "--allow-cidr",
                "8.8.8.0/24",
            ],
            &[
                "sandbox",
                "network",
                "sb-1",
                "--unblock",
                "--clear-allowlist",
            ],
            &[
                "run",
                "--port",
                "8000",
                "--",
                "python3",
                "-m",
                "http.server",
            ],
            &["serve", "--no-network", "--no-relay"],
            &[
                "serve",
                "--sandbox-cidr",
                "10.99.0.0/16",
                "--dns-upstream",
                "1.1.1.1",
                "--dns-upstream",
                "9.9.9.9:53",
            ],
            &[
                "serve",
                "--relay-https-listen",
                "0.0.0.0:443",
                "--relay-base-domain",
                "t.example.com",
                "--relay-cert",
                "c.pem",
                "--relay-key",
                "k.pem",
                "--relay-link-listen",
                "0.0.0.0:7443",
            ],
            &[
                "serve",
                "--relay-link",
                "relay.example.com:7443",
                "--relay-ca",
                "ca.pem",
                "--relay-public-https-port",
                "443",
                "--relay-raw-host",
                "relay.example.com",
            ],
            &[
                "relay",
                "--control-url",
                "http://10.0.0.1:7070",
                "--secrets",
                "s.json",
                "--link-listen",
                "0.0.0.0:7443",
                "--raw-ports",
                "40000-40099",
            ],
        ] {
            if let Err(e) = parse(args) {
                panic!("{args:?}: {e}");
            }
        }
    }
}
