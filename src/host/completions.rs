//! `moonlens-host completions --out DIR`: moonlensd's shell completions (bash, zsh, fish) and
//! man page, generated from the daemon's own command definition ([`crate::daemon::cli`]),
//! so they list exactly the options the daemon accepts. `board/build-deb.sh` packages them.

use crate::error::{Context, Result};
use clap_complete::Shell;
use std::path::{Path, PathBuf};

/// Writes the files into `out` (created); returns their paths.
pub fn write(out: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out).context(format_args!("cannot create {}", out.display()))?;
    let mut written = Vec::new();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut cmd = crate::daemon::cli::command();
        let path = clap_complete::generate_to(shell, &mut cmd, "moonlensd", out).context(
            format_args!("writing {shell} completions to {}", out.display()),
        )?;
        written.push(path);
    }
    let man = out.join("moonlensd.1");
    let mut page = Vec::new();
    clap_mangen::Man::new(crate::daemon::cli::command())
        .render(&mut page)
        .context("rendering the man page")?;
    std::fs::write(&man, page).context(format_args!("writing {}", man.display()))?;
    written.push(man);
    Ok(written)
}
