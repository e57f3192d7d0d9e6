//! The `diskmount` command.

mod demo;
mod hold;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Mount virtual disk images, and always take everything down again.
#[derive(Parser)]
#[command(name = "diskmount", version, about)]
struct Cli {
    /// Show the library's log (-v: info, -vv: debug). RUST_LOG also works.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build a small image in a temporary directory and show the whole job on it.
    Demo,
    /// Test helper: take an image to a state and wait there until killed.
    #[command(hide = true)]
    Hold(hold::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_timestamp(None)
        .init();
    let result = match cli.command {
        Command::Demo => demo::run(),
        Command::Hold(args) => hold::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("diskmount: {e}");
            ExitCode::FAILURE
        }
    }
}
