//! `moonlens-host completions --out DIR`: shell completions (bash, zsh, fish) and man pages of
//! both binaries, generated from their own command definitions ([`crate::daemon::cli`],
//! [`crate::host::cli`]), so they list exactly the options each accepts. `board/build-deb.sh`
//! packages moonlensd's.

use crate::error::{Context, Result};
use clap_complete::Shell;
use std::path::{Path, PathBuf};

/// Writes the files into `out` (created); returns their paths.
pub fn write(out: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out).context(format_args!("cannot create {}", out.display()))?;
    let mut written = Vec::new();
    for (name, command) in [
        (
            "moonlensd",
            crate::daemon::cli::command as fn() -> clap::Command,
        ),
        ("moonlens-host", crate::host::cli::command),
    ] {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let path = clap_complete::generate_to(shell, &mut command(), name, out).context(
                format_args!("writing {shell} completions to {}", out.display()),
            )?;
            written.push(path);
        }
        let man = out.join(format!("{name}.1"));
        let mut page = Vec::new();
        clap_mangen::Man::new(command())
            .render(&mut page)
            .context("rendering the man page")?;
        std::fs::write(&man, page).context(format_args!("writing {}", man.display()))?;
        written.push(man);
    }
    Ok(written)
}
