//! Minimal command-line parsing for `moonlens-host` (moonlensd is on clap, `daemon::cli`):
//! `--name value` options, `--flag` switches and positionals, with errors that name the bad
//! argument.

use crate::error::{Error, Result};
use std::collections::BTreeMap;

#[derive(Debug, Default)]
pub struct Args {
    pub positional: Vec<String>,
    options: BTreeMap<String, String>,
    flags: Vec<String>,
}

impl Args {
    /// `switches` lists the options that take no value.
    pub fn parse(args: impl IntoIterator<Item = String>, switches: &[&str]) -> Result<Args> {
        let mut out = Args::default();
        let mut it = args.into_iter();
        while let Some(a) = it.next() {
            // asking for help never needs a value, whatever the command
            if a == "--help" || a == "-h" {
                out.flags.push("help".into());
            } else if let Some(name) = a.strip_prefix("--") {
                if switches.contains(&name) {
                    out.flags.push(name.to_string());
                } else {
                    let v = it
                        .next()
                        .ok_or_else(|| Error::new(format!("--{name} needs a value")))?;
                    out.options.insert(name.to_string(), v);
                }
            } else {
                out.positional.push(a);
            }
        }
        Ok(out)
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.options.get(name).map(String::as_str)
    }

    pub fn require(&self, name: &str) -> Result<&str> {
        self.get(name)
            .ok_or_else(|| Error::new(format!("missing --{name}")))
    }

    pub fn flag(&self, name: &str) -> bool {
        self.flags.iter().any(|f| f == name)
    }

    /// `--help` or `-h` was given (anywhere).
    pub fn wants_help(&self) -> bool {
        self.flag("help")
    }

    pub fn number<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| Error::new(format!("--{name} {v:?} is not a valid number"))),
        }
    }

    /// Fails on any option not in `known` (typos should not pass silently).
    pub fn only(&self, known: &[&str]) -> Result<()> {
        for k in self.options.keys().chain(self.flags.iter()) {
            if !known.contains(&k.as_str()) && k != "help" {
                return Err(Error::new(format!("unknown option --{k}")));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Result<Args> {
        Args::parse(v.iter().map(|s| s.to_string()), &["json"])
    }

    #[test]
    fn help_needs_no_value_anywhere() {
        for v in [
            &["--help"][..],
            &["--bundle", "b", "-h"],
            &["--help", "--json"],
        ] {
            let a = args(v).unwrap();
            assert!(a.wants_help(), "{v:?}");
            a.only(&["bundle", "json"]).unwrap();
        }
        assert!(!args(&["--bundle", "b"]).unwrap().wants_help());
        let e = args(&["--bundle"]).unwrap_err().to_string();
        assert!(e.contains("--bundle needs a value"), "{e}");
    }
}
