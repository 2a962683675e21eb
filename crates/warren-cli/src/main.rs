//! `warren`: the command-line entry point. Parses arguments, sets up
//! logging, and calls into the libraries; one file per subcommand.

mod image;
mod local;
mod run;
mod serve;

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
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run::run(&cli.data_dir, args),
        Command::Image(cmd) => image::run(&cli.data_dir, cmd),
        Command::Serve(args) => serve::run(&cli.data_dir, args),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("warren: {e:#}");
            std::process::exit(1);
        }
    }
}
