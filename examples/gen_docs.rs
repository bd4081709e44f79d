//! Writes the man pages and shell completions of `p11audit` from its command-line definition
//! (src/bin/p11audit/cli.rs, the file the binary parses its arguments with), for the Debian
//! package (scripts/package.sh):
//!
//!   cargo run --example gen_docs -- OUT-DIR
//!
//! OUT-DIR gets `man/p11audit.1` and one `man/p11audit-COMMAND.1` per subcommand, and
//! `completions/p11audit.bash`, `completions/_p11audit` (zsh) and
//! `completions/p11audit.fish`.

// The generator reads the definition only; the binary's code that uses the parsed values is
// not part of this program.
#[allow(dead_code)]
#[path = "../src/bin/p11audit/cli.rs"]
mod cli;

use clap::CommandFactory;
use clap_complete::Shell;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

fn write_man_pages(cmd: &clap::Command, dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    // Every page names the package version (the subcommands have none of their own).
    let source = format!("p11audit {}", env!("CARGO_PKG_VERSION"));
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .source(source.as_str())
        .render(&mut page)?;
    std::fs::write(dir.join("p11audit.1"), page)?;
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        // `p11audit-verify(1)`: the subcommand named as the man page convention for git-style
        // tools has it, with its own options and exit statuses.
        let name = format!("p11audit-{}", sub.get_name());
        let mut page = Vec::new();
        clap_mangen::Man::new(sub.clone())
            .title(name.as_str())
            .source(source.as_str())
            .render(&mut page)?;
        std::fs::write(dir.join(format!("{name}.1")), page)?;
    }
    Ok(())
}

fn write_completions(cmd: &mut clap::Command, dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, cmd, "p11audit", dir)?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let Some(out) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: gen_docs OUT-DIR");
        return ExitCode::from(2);
    };
    let mut cmd = cli::Cli::command();
    cmd.build();
    let written = write_man_pages(&cmd, &out.join("man"))
        .and_then(|()| write_completions(&mut cmd, &out.join("completions")));
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gen_docs: {}: {e}", out.display());
            ExitCode::FAILURE
        }
    }
}
