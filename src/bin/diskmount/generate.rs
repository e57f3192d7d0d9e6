//! `diskmount generate man --dir DIR` and `diskmount generate completions
//! SHELL [--dir DIR]`: the man pages and shell completions, made from the
//! same command-line definition the parser uses, so they cannot drift from
//! it. Hidden: packagers and the install steps in the README call it.

use std::path::PathBuf;

use clap_complete::Shell;

use crate::opts::Error;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(clap::Subcommand)]
enum What {
    /// Man pages: diskmount.1, and diskmount-COMMAND.1 for each command.
    Man {
        /// The directory to write them into (created if missing).
        #[arg(long)]
        dir: PathBuf,
    },
    /// The completion script for SHELL, on stdout or into --dir.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: Shell,
        /// The directory to write it into (created if missing), under the
        /// name the shell looks for.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// Writes what `args` asks for; each file written is printed on stdout.
pub fn run(args: Args, mut cmd: clap::Command) -> Result<(), Error> {
    let mkdir = |dir: &PathBuf| {
        std::fs::create_dir_all(dir)
            .map_err(|e| crate::failure::Failed::new("generate", dir, "create directory", e))
    };
    match args.what {
        What::Man { dir } => {
            mkdir(&dir)?;
            clap_mangen::generate_to(cmd.clone(), &dir)
                .map_err(|e| crate::failure::Failed::new("generate", &dir, "write man pages", e))?;
            let mut names = vec!["diskmount.1".to_string()];
            cmd.build();
            names.extend(
                cmd.get_subcommands()
                    .filter(|s| !s.is_hide_set() && s.get_name() != "help")
                    .map(|s| format!("diskmount-{}.1", s.get_name())),
            );
            for n in names {
                println!("{}", dir.join(n).display());
            }
        }
        What::Completions { shell, dir: None } => {
            clap_complete::generate(shell, &mut cmd, "diskmount", &mut std::io::stdout());
        }
        What::Completions {
            shell,
            dir: Some(dir),
        } => {
            mkdir(&dir)?;
            let path =
                clap_complete::generate_to(shell, &mut cmd, "diskmount", &dir).map_err(|e| {
                    crate::failure::Failed::new("generate", &dir, "write completions", e)
                })?;
            println!("{}", path.display());
        }
    }
    Ok(())
}
