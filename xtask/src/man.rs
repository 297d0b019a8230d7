//! `cargo xtask man`: man pages and shell completions for the four tools, generated
//! from their clap definitions (each tool's hidden `--generate WHAT` flag, from the
//! `cli-edge` crate), written under `target/dist/`:
//!
//! ```text
//! target/dist/man/chat-srv.1 ...              man -l target/dist/man/chat-srv.1
//! target/dist/completions/bash/chat-srv ...   source it, or copy to
//!                                             /usr/share/bash-completion/completions/
//! target/dist/completions/zsh/_chat-srv ...   a folder on $fpath
//! target/dist/completions/fish/chat-srv.fish  ~/.config/fish/completions/
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{ensure, Context, Result};

use crate::service::{self, Bins};

/// Each output: the `--generate` value and where its file goes for a tool, as
/// (folder, prefix, suffix) around the tool's name.
const OUTPUTS: [(&str, &str, &str, &str); 4] = [
    ("man", "man", "", ".1"),
    ("bash", "completions/bash", "", ""),
    ("zsh", "completions/zsh", "_", ""),
    ("fish", "completions/fish", "", ".fish"),
];

/// Builds the release binaries and writes every man page and completion script.
pub fn run() -> Result<()> {
    let bins = Bins::new(&service::build_release()?)?;
    let dist = service::project_root().join("target/dist");
    let written = write_all(&bins, &dist)?;
    for path in &written {
        println!("{}", path.display());
    }
    println!(
        "wrote {} files; try: man -l {}",
        written.len(),
        dist.join("man/chat-srv.1").display()
    );
    Ok(())
}

/// Writes the outputs of every tool in `bins` under `dist`; returns the paths written.
fn write_all(bins: &Bins, dist: &Path) -> Result<Vec<PathBuf>> {
    let tools = [
        ("chat-srv", &bins.chat_srv),
        ("chat-cli", &bins.chat_cli),
        ("up-srv", &bins.up_srv),
        ("up-cli", &bins.up_cli),
    ];
    let mut written = Vec::new();
    for (name, exe) in tools {
        for (what, folder, prefix, suffix) in OUTPUTS {
            let out = Command::new(exe)
                .args(["--generate", what])
                .output()
                .with_context(|| format!("running {} --generate {what}", exe.display()))?;
            ensure!(
                out.status.success() && !out.stdout.is_empty(),
                "{name} --generate {what} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
            let path = dist.join(folder).join(format!("{prefix}{name}{suffix}"));
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
            std::fs::write(&path, &out.stdout)
                .with_context(|| format!("writing {}", path.display()))?;
            written.push(path);
        }
    }
    Ok(written)
}
