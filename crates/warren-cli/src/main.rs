//! `warren`: the command-line entry point. Parses arguments, sets up
//! logging, and calls into the libraries; one file per subcommand.

mod files;
mod image;
mod local;
mod remote;
mod run;
mod sandbox;
mod serve;
mod stream;
mod term;
mod token;
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
    /// Serve the HTTP API with an embedded node and state.
    Serve(serve::ServeArgs),
    /// Manage images.
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// Manage sandboxes on a Warren server (WARREN_URL, WARREN_TOKEN).
    #[command(subcommand)]
    Sandbox(sandbox::SandboxCommand),
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
        Command::Sandbox(cmd) => sandbox::run(&cli.data_dir, cmd),
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
