//! The `diskmount` command.

mod cleanup;
mod copy;
mod demo;
mod failure;
mod generate;
mod hold;
mod inject;
mod inspect;
mod inspect_os;
mod inspect_volumes;
mod interrupt;
mod json;
mod mount;
mod opts;
mod progress;
mod run;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

const EXIT_STATUS: &str = "\
Exit status:
  0        done
  1        failed (the message names the step, the path and the cause)
  2        usage error: a wrong option or value
  3        in use: the image, device or mount is used by someone else, or stayed busy
  N        run: the command's own status (128+N when a signal N killed it)
  130/143  interrupted by SIGINT/SIGTERM (run: passed on to its command), torn down";

/// Mount virtual disk images, and always take everything down again.
#[derive(Parser)]
#[command(
    name = "diskmount",
    version,
    about = "Mount virtual disk images, and always take everything down again",
    after_long_help = EXIT_STATUS
)]
struct Cli {
    /// Show the library's log (-v: info, -vv: debug). RUST_LOG also works.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Print results (inspect, mount, umount, copy-in, copy-out) and errors as JSON for programs.
    #[arg(long, global = true)]
    json: bool,
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
    /// Put SSH keys, a host name, files and a password hash into a guest, in one mount.
    Inject(inject::Args),
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
    /// Write the man pages or a shell completion script (for packagers).
    #[command(hide = true)]
    Generate(generate::Args),
}

impl Command {
    /// What the hints on failure need to know.
    fn context(&self) -> failure::Context {
        match self {
            Command::Inspect(a) => a.context(),
            Command::Run(a) => a.context(),
            Command::CopyIn(a) => a.context(),
            Command::CopyOut(a) => a.context(),
            Command::Inject(a) => a.context(),
            Command::Mount(a) => a.context(),
            Command::Generate(_) => failure::Context::default(),
            _ => failure::Context {
                attaches: true,
                ..Default::default()
            },
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::try_parse().unwrap_or_else(|e| failure::usage(e));
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
    // teardown: they are blocked before any thread starts and passed on to
    // the command by `run`; the other commands finish and tear down.
    let signals = match run::block_signals() {
        Ok(s) => s,
        Err(e) => {
            let cx = failure::Context::default();
            return ExitCode::from(failure::report(&*e, &cx, cli.json));
        }
    };
    let json = cli.json;
    let cx = cli.command.context();
    // `run` passes the signals on to its command; `hold` is killed on
    // purpose; every other command stops and tears down.
    let signals = match cli.command {
        Command::Run(_) | Command::Hold(_) => Some(signals),
        _ => {
            interrupt::watch(signals);
            None
        }
    };
    let result = match cli.command {
        Command::Inspect(a) => inspect::inspect(a, json).map(|()| ExitCode::SUCCESS),
        Command::Run(a) => run::run(a, signals.expect("kept for run")),
        Command::CopyIn(a) => copy::copy_in(a, json).map(|()| ExitCode::SUCCESS),
        Command::CopyOut(a) => copy::copy_out(a, json).map(|()| ExitCode::SUCCESS),
        Command::Inject(a) => inject::run(a, json).map(|()| ExitCode::SUCCESS),
        Command::Mount(a) => mount::mount(a, json).map(|()| ExitCode::SUCCESS),
        Command::Umount(a) => mount::umount(a, json).map(|()| ExitCode::SUCCESS),
        Command::Cleanup(a) => cleanup::run(a).map(|()| ExitCode::SUCCESS),
        Command::Demo => demo::run().map(|()| ExitCode::SUCCESS),
        Command::Hold(a) => {
            // The holder is killed on purpose: no blocked signals.
            let _ = run::signals().thread_unblock();
            hold::run(a).map(|()| ExitCode::SUCCESS)
        }
        Command::Generate(a) => generate::run(a, Cli::command()).map(|()| ExitCode::SUCCESS),
    };
    let code = match result {
        Ok(code) => code,
        Err(e) => ExitCode::from(failure::report(&*e, &cx, json)),
    };
    match interrupt::received() {
        // Interrupted, and torn down by now: the shell's convention.
        Some(signo) => ExitCode::from(128u8.wrapping_add(signo as u8)),
        None => code,
    }
}
