//! Daemon options, defined once: this struct is the command line (`clap`), the TOML config
//! file (`serde`; the same names with `_` for `-`) and the usage text (`moonlensd --help`),
//! so they cannot drift. Precedence: defaults, then `--config FILE`, then the command line.

use crate::error::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default, Deserialize, Serialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Model bundle directory [default: models/default]
    #[arg(long, value_name = "DIR")]
    pub bundle: Option<PathBuf>,
    /// Frames from `v4l:/dev/videoN` or `dir:PATH` (a replay) [default: /dev/video0 if
    /// present, else the bundled samples]
    #[arg(long, value_name = "SPEC")]
    pub source: Option<String>,
    /// Index directory [default: var/index]
    #[arg(long, value_name = "DIR")]
    pub index: Option<PathBuf>,
    /// Unix socket to answer on [default: var/moonlens.sock]
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Serial line to answer on too (e.g. /dev/ttyTHS0)
    #[arg(long, value_name = "DEV")]
    pub serial: Option<String>,
    /// Serial speed [default: 115200]
    #[arg(long, value_name = "N")]
    pub baud: Option<u32>,
    /// Entries the ring holds, fixed when the index is created [default: 10000]
    #[arg(long, value_name = "N")]
    pub capacity: Option<u64>,
    /// Frames a second to take [default: 2 from a camera, 20 from a replay]
    #[arg(long, value_name = "N", value_parser = positive_number)]
    pub fps: Option<f64>,
    /// Camera frame width [default: 640]
    #[arg(long, value_name = "N")]
    pub width: Option<u32>,
    /// Camera frame height [default: 480]
    #[arg(long, value_name = "N")]
    pub height: Option<u32>,
    /// Replay a `dir:` source forever
    #[arg(long = "loop", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    #[serde(rename = "loop")]
    pub looping: Option<bool>,
    /// Pixel gate: mean grey difference (0-255) under which a frame is skipped, 0 = off
    /// [default: 2 for cameras, off for replays]
    #[arg(long, value_name = "X")]
    pub gate_pixels: Option<f32>,
    /// Embedding gate: cosine to the last stored frame above which a frame is skipped,
    /// >= 1 = off [default: 0.985 for cameras, off for replays]
    #[arg(long, value_name = "X")]
    pub gate_embedding: Option<f32>,
    /// Quiet time after a watch fired, in seconds [default: 60]
    #[arg(long, value_name = "N")]
    pub watch_cooldown_s: Option<u64>,
    /// Regions of each frame the index keeps for searches (the most confident cells of the
    /// backbone's feature map), 0-64, fixed when the index is created; 0 = none [default: 16]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(0..=crate::index::regions::COUNT_MAX as i64))]
    pub regions: Option<u32>,
    /// Weight of a frame's best region match added to its global score, 0-1; 0 = off
    /// [default: 0.1]
    #[arg(long, value_name = "X", value_parser = unit_interval)]
    pub region_weight: Option<f32>,
    /// Threads that encode frames, 1-8 [default: one per core]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..=super::ingest::MAX_WORKERS as i64))]
    pub workers: Option<u8>,
    /// Publish watch matches and status to this MQTT broker (`mqtt://host[:port]`)
    #[arg(long, value_name = "URL")]
    pub mqtt: Option<String>,
    /// Topic prefix for MQTT (`<prefix>/match`, `<prefix>/status`) [default: moonlens]
    #[arg(long, value_name = "TOPIC")]
    pub mqtt_topic: Option<String>,
    /// Push every entry to this fleet database too (postgresql://USER:PASSWORD@HOST:PORT/DB,
    /// PostgreSQL with pgvector; docs/fleet.md)
    #[arg(long, value_name = "URL")]
    pub fleet_db: Option<String>,
    /// This board's name in the fleet database [default: the host name]
    #[arg(long, value_name = "NAME")]
    pub fleet_board: Option<String>,
    /// Seconds between pushes to the fleet database [default: 10]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub fleet_every_s: Option<u64>,
    /// Push the thumbnails too [default: false]
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub fleet_thumbs: Option<bool>,
    /// Serve the protocol on stdin/stdout [default: when stdin is a terminal]
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub console: Option<bool>,
    /// Do not serve the terminal (same as --console=false)
    #[arg(long, conflicts_with = "console")]
    #[serde(skip)]
    pub no_console: bool,
    /// Read these options from a TOML file first (SIGHUP re-reads its `bundle`)
    #[arg(long = "config", value_name = "FILE")]
    #[serde(skip)]
    pub file: Option<PathBuf>,
}

/// A number from 0 to 1 (`--region-weight`).
fn unit_interval(v: &str) -> std::result::Result<f32, String> {
    v.parse::<f32>()
        .ok()
        .filter(|x| (0.0..=1.0).contains(x))
        .ok_or_else(|| format!("{v:?} is not a number from 0 to 1"))
}

/// A finite number above zero (`--fps`).
fn positive_number(v: &str) -> std::result::Result<f64, String> {
    v.parse::<f64>()
        .ok()
        .filter(|x| x.is_finite() && *x > 0.0)
        .ok_or_else(|| format!("{v:?} is not a number above zero"))
}

impl Config {
    pub fn from_file(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .context(format_args!("cannot read config {}", path.display()))?;
        let mut cfg: Config =
            toml::from_str(&text).context(format_args!("config {}", path.display()))?;
        cfg.file = Some(path.to_path_buf());
        Ok(cfg)
    }

    /// The options in effect: `--config`'s file (when given) under the command line's.
    pub fn resolve(cli: Config) -> Result<Config> {
        let mut cfg = match &cli.file {
            Some(p) => Config::from_file(p)?,
            None => Config::default(),
        };
        cfg.overlay(cli)?;
        Ok(cfg)
    }

    /// Every option `other` sets replaces this one's (field by field through their serde
    /// form, so a new option needs no code here).
    fn overlay(&mut self, other: Config) -> Result<()> {
        let no_console = other.no_console;
        let file = other.file.clone().or(self.file.take());
        let mut base = serde_json::to_value(&*self).expect("plain struct");
        let top = serde_json::to_value(&other).expect("plain struct");
        if let (Some(b), serde_json::Value::Object(t)) = (base.as_object_mut(), top) {
            b.extend(t.into_iter().filter(|(_, v)| !v.is_null()));
        }
        *self =
            serde_json::from_value(base).map_err(|e| crate::Error::new(format!("options: {e}")))?;
        if no_console {
            self.console = Some(false);
        }
        self.file = file;
        Ok(())
    }

    pub fn bundle(&self) -> PathBuf {
        self.bundle
            .clone()
            .unwrap_or_else(|| "models/default".into())
    }

    pub fn source(&self) -> String {
        self.source.clone().unwrap_or_else(|| {
            if Path::new("/dev/video0").exists() {
                "v4l:/dev/video0".into()
            } else {
                "dir:models/samples".into()
            }
        })
    }

    pub fn index(&self) -> PathBuf {
        self.index.clone().unwrap_or_else(|| "var/index".into())
    }

    pub fn socket(&self) -> PathBuf {
        self.socket
            .clone()
            .unwrap_or_else(|| "var/moonlens.sock".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        cfg: Config,
    }

    fn apply(v: &[&str]) -> std::result::Result<Config, String> {
        let cli = Cli::try_parse_from(std::iter::once("moonlensd").chain(v.iter().copied()))
            .map_err(|e| e.to_string())?;
        Config::resolve(cli.cfg).map_err(|e| e.to_string())
    }

    /// Counts are whole numbers: `--capacity 2.5` was once cut to 2 without a word.
    #[test]
    fn counts_must_be_whole_numbers() {
        assert_eq!(apply(&["--capacity", "300"]).unwrap().capacity, Some(300));
        for bad in [
            &["--capacity", "2.5"][..],
            &["--width", "-1"],
            &["--baud", "99999999999"],
            &["--watch-cooldown-s", "1e3"],
            &["--workers", "9"],
            &["--workers", "0"],
        ] {
            // the error names the value (and the option, unless the value reads as one: -1)
            let e = apply(bad).unwrap_err();
            assert!(e.contains(bad[1]), "{bad:?}: {e}");
            assert!(
                bad[1].starts_with('-') || e.contains(bad[0]),
                "{bad:?}: {e}"
            );
        }
        assert_eq!(apply(&["--fps", "2.5"]).unwrap().fps, Some(2.5));
        assert!(apply(&["--fps", "NaN"]).is_err());
        assert!(apply(&["--fps", "0"]).is_err());
    }

    /// A typo is refused with a suggestion; switches take no value or an explicit one.
    #[test]
    fn switches_and_typos() {
        let e = apply(&["--capcity", "3"]).unwrap_err();
        assert!(e.contains("--capcity") && e.contains("--capacity"), "{e}");
        assert_eq!(apply(&["--loop"]).unwrap().looping, Some(true));
        assert_eq!(apply(&["--no-console"]).unwrap().console, Some(false));
        assert_eq!(apply(&["--console"]).unwrap().console, Some(true));
        assert!(apply(&["--console", "--no-console"]).is_err());
        assert_eq!(apply(&[]).unwrap().console, None);
    }

    /// The file sets what the command line does not; the command line wins; a key the
    /// struct does not have is refused by name.
    #[test]
    fn the_command_line_wins_over_the_file() {
        let dir = std::env::temp_dir().join(format!("moonlens-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("d.toml");
        std::fs::write(
            &f,
            "capacity = 50\nfps = 4.0\nloop = true\nmqtt_topic = \"house\"\n",
        )
        .unwrap();
        let c = apply(&["--config", f.to_str().unwrap(), "--fps", "9"]).unwrap();
        assert_eq!(
            (c.capacity, c.fps, c.looping, c.mqtt_topic.as_deref()),
            (Some(50), Some(9.0), Some(true), Some("house"))
        );
        assert_eq!(c.file.as_deref(), Some(f.as_path()));
        std::fs::write(&f, "capacty = 50\n").unwrap();
        let e = apply(&["--config", f.to_str().unwrap()]).unwrap_err();
        assert!(e.contains("capacty"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
