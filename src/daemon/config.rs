//! Daemon options: defaults, then a TOML config file (`--config`), then the command line.

use crate::cli::Args;
use crate::error::{Context, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub bundle: Option<PathBuf>,
    /// `v4l:/dev/videoN` or `dir:PATH`; default: /dev/video0 if present, else the samples.
    pub source: Option<String>,
    pub index: Option<PathBuf>,
    pub socket: Option<PathBuf>,
    pub serial: Option<String>,
    pub baud: Option<u32>,
    /// Entries the ring holds (fixed when the index is created).
    pub capacity: Option<u64>,
    pub fps: Option<f64>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// Replay a `dir:` source forever.
    #[serde(rename = "loop")]
    pub looping: Option<bool>,
    /// Pixel gate threshold (0 = off); default: on for cameras, off for replays.
    pub gate_pixels: Option<f32>,
    /// Embedding gate cosine (>= 1 = off); default: on for cameras, off for replays.
    pub gate_embedding: Option<f32>,
    pub watch_cooldown_s: Option<u64>,
    /// Encode workers (1..=8); default: one per core.
    pub workers: Option<usize>,
    /// Publish watch matches and status to this MQTT broker (`mqtt://host[:port]`).
    pub mqtt: Option<String>,
    /// Topic prefix for MQTT (`<prefix>/match`, `<prefix>/status`); default `moonlens`.
    pub mqtt_topic: Option<String>,
    /// Serve the protocol on stdin/stdout; default: when stdin is a terminal.
    pub console: Option<bool>,
    /// The file these options came from (`--config`), which SIGHUP re-reads.
    #[serde(skip)]
    pub file: Option<PathBuf>,
}

pub const OPTIONS: &[&str] = &[
    "bundle",
    "source",
    "index",
    "socket",
    "serial",
    "baud",
    "capacity",
    "fps",
    "width",
    "height",
    "loop",
    "gate-pixels",
    "gate-embedding",
    "watch-cooldown-s",
    "workers",
    "mqtt",
    "mqtt-topic",
    "console",
    "config",
    "no-console",
];

impl Config {
    pub fn from_file(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .context(format_args!("cannot read config {}", path.display()))?;
        let mut cfg: Config =
            toml::from_str(&text).context(format_args!("config {}", path.display()))?;
        cfg.file = Some(path.to_path_buf());
        Ok(cfg)
    }

    /// Command-line options override the file's.
    pub fn apply_args(&mut self, a: &Args) -> Result<()> {
        let num = |n: &str| -> Result<Option<f64>> {
            a.get(n)
                .map(|v| {
                    v.parse::<f64>()
                        .ok()
                        .filter(|x| x.is_finite())
                        .ok_or_else(|| crate::Error::new(format!("--{n} {v:?} is not a number")))
                })
                .transpose()
        };
        // counts and sizes: a whole number in range, never a float cut down in silence
        // (`--capacity 2.5` used to become 2)
        fn whole<T: std::str::FromStr + TryFrom<u64>>(a: &Args, n: &str) -> Result<Option<T>> {
            a.get(n)
                .map(|v| {
                    v.parse::<u64>()
                        .ok()
                        .and_then(|x| T::try_from(x).ok())
                        .ok_or_else(|| {
                            crate::Error::new(format!(
                                "--{n} {v:?} must be a whole number (and not too large)"
                            ))
                        })
                })
                .transpose()
        }
        if let Some(v) = a.get("bundle") {
            self.bundle = Some(v.into());
        }
        if let Some(v) = a.get("source") {
            self.source = Some(v.into());
        }
        if let Some(v) = a.get("index") {
            self.index = Some(v.into());
        }
        if let Some(v) = a.get("socket") {
            self.socket = Some(v.into());
        }
        if let Some(v) = a.get("serial") {
            self.serial = Some(v.into());
        }
        if let Some(v) = whole::<u32>(a, "baud")? {
            self.baud = Some(v);
        }
        if let Some(v) = whole::<u64>(a, "capacity")? {
            self.capacity = Some(v);
        }
        if let Some(v) = num("fps")? {
            self.fps = Some(v);
        }
        if let Some(v) = whole::<u32>(a, "width")? {
            self.width = Some(v);
        }
        if let Some(v) = whole::<u32>(a, "height")? {
            self.height = Some(v);
        }
        if a.flag("loop") {
            self.looping = Some(true);
        }
        if let Some(v) = num("gate-pixels")? {
            self.gate_pixels = Some(v as f32);
        }
        if let Some(v) = num("gate-embedding")? {
            self.gate_embedding = Some(v as f32);
        }
        if let Some(v) = whole::<u64>(a, "watch-cooldown-s")? {
            self.watch_cooldown_s = Some(v);
        }
        if let Some(v) = whole::<usize>(a, "workers")? {
            if !(1..=super::ingest::MAX_WORKERS).contains(&v) {
                crate::bail!(
                    "--workers {v}: must be 1 to {} (encode threads)",
                    super::ingest::MAX_WORKERS
                );
            }
            self.workers = Some(v);
        }
        if let Some(v) = a.get("mqtt") {
            self.mqtt = Some(v.into());
        }
        if let Some(v) = a.get("mqtt-topic") {
            self.mqtt_topic = Some(v.into());
        }
        if a.flag("console") {
            self.console = Some(true);
        }
        if a.flag("no-console") {
            self.console = Some(false);
        }
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

    fn apply(v: &[&str]) -> Result<Config> {
        let a = Args::parse(v.iter().map(|s| s.to_string()), &["loop"])?;
        let mut c = Config::default();
        c.apply_args(&a)?;
        Ok(c)
    }

    /// Counts are whole numbers: `--capacity 2.5` was cut to 2 without a word.
    #[test]
    fn counts_must_be_whole_numbers() {
        assert_eq!(apply(&["--capacity", "300"]).unwrap().capacity, Some(300));
        for bad in [
            &["--capacity", "2.5"][..],
            &["--width", "-1"],
            &["--baud", "99999999999"],
            &["--watch-cooldown-s", "1e3"],
        ] {
            let e = apply(bad).unwrap_err().to_string();
            assert!(
                e.contains(bad[0]) && e.contains("whole number"),
                "{bad:?}: {e}"
            );
        }
        assert_eq!(apply(&["--fps", "2.5"]).unwrap().fps, Some(2.5));
        assert!(apply(&["--fps", "NaN"]).is_err());
    }
}
