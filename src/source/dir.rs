//! `dir:PATH`: replay the images of a folder in sorted file-name order, once or looping, at
//! a given rate. The entry label is the file name; an unreadable file is an event, not an end.

use super::{now_ms, Frame, FrameSource, Next};
use crate::error::{Context, Result};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub struct DirSource {
    id: String,
    files: Vec<PathBuf>,
    pos: usize,
    interval: Duration,
    looping: bool,
    last: Option<Instant>,
}

fn is_image(p: &Path) -> bool {
    matches!(
        p.extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("png" | "jpg" | "jpeg")
    )
}

impl DirSource {
    pub fn open(dir: &str, interval: Duration, looping: bool) -> Result<DirSource> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .context(format_args!("source dir:{dir}: cannot list the folder"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && is_image(p))
            .collect();
        files.sort();
        if files.is_empty() {
            crate::bail!("source dir:{dir}: no .png/.jpg images in the folder");
        }
        Ok(DirSource {
            id: "dir".into(),
            files,
            pos: 0,
            interval,
            looping,
            last: None,
        })
    }
}

impl FrameSource for DirSource {
    fn id(&self) -> &str {
        &self.id
    }

    fn is_live(&self) -> bool {
        false
    }

    fn next(&mut self) -> Next {
        if self.pos >= self.files.len() {
            if !self.looping {
                return Next::Done;
            }
            self.pos = 0;
        }
        if let Some(last) = self.last {
            let due = last + self.interval;
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        self.last = Some(Instant::now());
        let path = self.files[self.pos].clone();
        self.pos += 1;
        let label = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match image::open(&path) {
            Ok(image) => Next::Frame(Frame {
                image,
                label,
                ts_ms: now_ms(),
            }),
            Err(e) => Next::Failed(format!("{}: cannot decode: {e}", path.display())),
        }
    }
}
