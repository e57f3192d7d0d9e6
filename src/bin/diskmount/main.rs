//! The `diskmount` command.

mod cleanup;
mod copy;
mod demo;
mod hold;
mod inspect;
mod mount;
mod opts;
mod run;

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
    /// Show an image's format, size, partitions and filesystems, without mounting it.
    Inspect(inspect::Args),
    /// Mount, run a command in the image's root (DISKMOUNT_ROOT), tear down.
    Run(run::Args),
    /// Copy host files or trees into a directory of the image.
    CopyIn(copy::InArgs),
    /// Copy a file or tree out of the image.
    CopyOut(copy::OutArgs),
    /// Mount and leave mounted (until `umount`).
    Mount(mount::MountArgs),
    /// Unmount and release what is mounted there, whoever mounted it.
    Umount(mount::UmountArgs),
    /// Tear down what diskmount processes that died (crash, kill -9) left behind.
    Cleanup(cleanup::Args),
    /// Build a small partitioned image in a temporary directory and show the whole job on it.
    Demo,
    /// Test helper: take an image to a state and wait there until killed.
    #[command(hide = true)]
    Hold(hold::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The run directory is the command line's configuration.
    diskmount::RunDir::set_default(cleanup::run_dir());
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_timestamp(None)
        .init();
    // Ctrl-C and SIGTERM must not kill diskmount between attach and
    // teardown: they are blocked before any thread starts, passed on to the
    // command by `run`, and answered with an exit after teardown elsewhere.
    let signals = match run::block_signals() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("diskmount: cannot set up signal handling: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Inspect(a) => inspect::run(a).map(|()| ExitCode::SUCCESS),
        Command::Run(a) => run::run(a, signals),
        Command::CopyIn(a) => copy::copy_in(a).map(|()| ExitCode::SUCCESS),
        Command::CopyOut(a) => copy::copy_out(a).map(|()| ExitCode::SUCCESS),
        Command::Mount(a) => mount::mount(a).map(|()| ExitCode::SUCCESS),
        Command::Umount(a) => mount::umount(a).map(|()| ExitCode::SUCCESS),
        Command::Cleanup(a) => cleanup::run(a).map(|()| ExitCode::SUCCESS),
        Command::Demo => demo::run().map(|()| ExitCode::SUCCESS),
        Command::Hold(a) => {
            // The holder is killed on purpose: no blocked signals.
            let _ = run::signals().thread_unblock();
            hold::run(a).map(|()| ExitCode::SUCCESS)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("diskmount: {e}");
            ExitCode::FAILURE
        }
    }
}
