//! `moonlensd`'s command line: the daemon's options ([`Config`], shared with the config
//! file) and its two client subcommands. In the library so that `moonlens-host completions`
//! generates the shell completions and the man page from the same definitions.

use super::config::Config;
use std::path::PathBuf;

/// The on-device camera search daemon: encodes camera frames into a ring index and answers
/// text queries on a Unix socket, a serial line and the terminal (docs/protocol.md).
#[derive(Debug, clap::Parser)]
#[command(name = "moonlensd", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Option<Cmd>,
    #[command(flatten)]
    pub cfg: Config,
}

#[derive(Debug, clap::Subcommand)]
pub enum Cmd {
    /// Ask a running daemon one search; its answer on stdout (exit 1 on an error reply)
    Query {
        /// What to look for, e.g. a rabbit next to the full moon
        #[arg(required = true, num_args = 1..)]
        text: Vec<String>,
        /// Ask and print in the JSON form
        #[arg(long)]
        json: bool,
        /// Hits to return (1-100)
        #[arg(long, default_value_t = 5)]
        k: usize,
        /// The daemon's socket
        #[arg(long, value_name = "PATH", default_value = "var/moonlens.sock")]
        socket: PathBuf,
    },
    /// Check an index's files; prints a JSON report, exits 2 on corruption
    Verify {
        /// The index directory
        #[arg(long, value_name = "DIR")]
        index: PathBuf,
    },
}

/// The command definition (for completions and the man page).
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}
