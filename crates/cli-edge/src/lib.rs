//! What the four binaries (`chat-srv`, `chat-cli`, `up-srv`, `up-cli`) share at their
//! process edge, so they speak with one voice:
//!
//! - [`VERSION`]: `--version` names the release and the commit it was built from;
//! - [`print_error`]: every error is one line, `error: what failed: why`, with the
//!   chain joined by `: ` (a closed stdout is not an error, see [`is_broken_pipe`]);
//! - [`Generate`] and [`generate`]: a hidden `--generate WHAT` flag prints the tool's
//!   man page or a shell completion script from its clap definition, which
//!   `cargo xtask man` collects.
//!
//! Exit codes are each binary's own (documented in its `--help`); the shared meaning
//! is 0 success, 1 failure at run time, 2 usage error.

use std::io::{self, Write};

/// `--version` text: the package version and the commit, e.g. `0.1.0 (commit 1a2b3c4d5e6f)`.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("SOCKCHAT_COMMIT"),
    ")"
);

/// What `--generate` prints: the man page (roff) or a completion script.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Generate {
    /// The man page, in roff (`man -l FILE` shows it).
    Man,
    /// Completions for bash.
    Bash,
    /// Completions for zsh.
    Zsh,
    /// Completions for fish.
    Fish,
    /// Completions for elvish.
    Elvish,
    /// Completions for PowerShell.
    Powershell,
}

/// Writes what `what` names for the command `cmd` to `out`.
pub fn generate(what: Generate, mut cmd: clap::Command, out: &mut dyn Write) -> io::Result<()> {
    use clap_complete::Shell;
    let shell = match what {
        Generate::Man => return clap_mangen::Man::new(cmd).render(out),
        Generate::Bash => Shell::Bash,
        Generate::Zsh => Shell::Zsh,
        Generate::Fish => Shell::Fish,
        Generate::Elvish => Shell::Elvish,
        Generate::Powershell => Shell::PowerShell,
    };
    let name = cmd.get_name().to_owned();
    clap_complete::generate(shell, &mut cmd, name, out);
    Ok(())
}

/// Prints `error: ...` for `err` on stderr, the cause chain on the same line (`{:#}`
/// of an `anyhow::Error` joins it with `: `).
pub fn print_error(err: &dyn std::fmt::Display) {
    eprintln!("error: {err:#}");
}

/// Whether `err` is a write to a closed pipe (`up-cli ls | head -1`): tools end
/// quietly with success then, as `cat` and ripgrep do.
pub fn is_broken_pipe(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::BrokenPipe
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    /// A stand-in tool with one flag and the hidden `--generate`.
    #[derive(Debug, Parser)]
    #[command(name = "demo-tool", version = VERSION, about = "A demo tool")]
    struct Demo {
        /// Port to use.
        #[arg(short, long, default_value_t = 7)]
        port: u16,
        #[arg(long, hide = true, value_enum)]
        generate: Option<Generate>,
    }

    fn render(what: Generate) -> String {
        let mut out = Vec::new();
        generate(what, Demo::command(), &mut out).expect("render");
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn version_names_the_release_and_a_commit() {
        assert!(VERSION.starts_with(env!("CARGO_PKG_VERSION")), "{VERSION}");
        assert!(VERSION.contains("commit"), "{VERSION}");
    }

    #[test]
    fn man_page_and_completions_name_the_flags() {
        let man = render(Generate::Man);
        assert!(man.starts_with(".ie") || man.contains(".TH"), "{man}");
        assert!(man.contains("demo\\-tool") && man.contains("port"), "{man}");
        assert!(!man.contains("generate"), "hidden flag leaked: {man}");
        for shell in [Generate::Bash, Generate::Zsh, Generate::Fish] {
            let script = render(shell);
            assert!(script.contains("port"), "{shell:?}: {script}");
        }
    }

    #[test]
    fn broken_pipe_is_recognised() {
        assert!(is_broken_pipe(&io::Error::from(io::ErrorKind::BrokenPipe)));
        assert!(!is_broken_pipe(&io::Error::from(io::ErrorKind::NotFound)));
    }
}
