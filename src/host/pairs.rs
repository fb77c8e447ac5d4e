//! Image/caption pairs files: one JSON object a line, `{"image": "<path relative to the
//! file>", "text": "<caption>"}`. Used by `eval` and `train`.

use crate::error::{Context, Error, Result};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    pub image: PathBuf,
    pub text: String,
}

/// Fields a line may carry beyond these (`"source"`, ids of other tools) are ignored.
#[derive(serde::Deserialize)]
struct Line {
    image: String,
    text: String,
}

pub fn read(path: &Path) -> Result<Vec<Pair>> {
    let body = std::fs::read_to_string(path)
        .context(format_args!("cannot read pairs file {}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut out = Vec::new();
    for (i, line) in body.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let l: Line = serde_json::from_str(line).map_err(|e| {
            Error::new(format!(
                "{}:{}: {e}; each line must be {{\"image\": \"<path>\", \"text\": \"<caption>\"}}",
                path.display(),
                i + 1
            ))
        })?;
        if l.text.trim().is_empty() {
            crate::bail!("{}:{}: empty caption", path.display(), i + 1);
        }
        out.push(Pair {
            image: base.join(l.image),
            text: l.text,
        });
    }
    if out.is_empty() {
        crate::bail!("{}: no pairs (the file is empty)", path.display());
    }
    Ok(out)
}

/// The distinct images in first-seen order and, for each pair, its image's gallery index.
pub fn gallery(pairs: &[Pair]) -> (Vec<PathBuf>, Vec<usize>) {
    let mut images: Vec<PathBuf> = Vec::new();
    let mut index = std::collections::HashMap::new();
    let truth = pairs
        .iter()
        .map(|p| {
            *index.entry(p.image.clone()).or_insert_with(|| {
                images.push(p.image.clone());
                images.len() - 1
            })
        })
        .collect();
    (images, truth)
}

/// One line of a parallel-text file (`{split}_parallel.jsonl`, written by
/// models/convert/tuxpaint.py): a caption in some language beside its English source.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Parallel {
    pub source: String,
    pub text: String,
    #[serde(default)]
    pub lang: String,
}

pub fn read_parallel(path: &Path) -> Result<Vec<Parallel>> {
    let body = std::fs::read_to_string(path).context(format_args!(
        "cannot read parallel-text file {}",
        path.display()
    ))?;
    let mut out = Vec::new();
    for (i, line) in body.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let p: Parallel = serde_json::from_str(line).map_err(|e| {
            Error::new(format!(
                "{}:{}: {e}; each line must be {{\"source\": \"<English>\", \"text\": \
                 \"<translation>\", \"lang\": \"<locale>\"}}",
                path.display(),
                i + 1
            ))
        })?;
        if p.source.trim().is_empty() || p.text.trim().is_empty() {
            crate::bail!("{}:{}: empty source or text", path.display(), i + 1);
        }
        out.push(p);
    }
    if out.is_empty() {
        crate::bail!("{}: no lines (the file is empty)", path.display());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A line with more fields than moonlens reads (other tools add ids, sources) is taken;
    /// a line without a caption is refused with its line number.
    #[test]
    fn extra_fields_are_ignored_missing_ones_are_not() {
        let d = std::env::temp_dir().join(format!("moonlens-pairs-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let f = d.join("p.jsonl");
        std::fs::write(
            &f,
            "{\"image\": \"a.png\", \"text\": \"a rabbit\", \"source\": \"cam0\", \"id\": 7}\n",
        )
        .unwrap();
        let p = read(&f).unwrap();
        assert_eq!((p.len(), p[0].text.as_str()), (1, "a rabbit"));
        std::fs::write(&f, "{\"image\": \"a.png\"}\n").unwrap();
        let e = read(&f).unwrap_err().to_string();
        assert!(e.contains("p.jsonl:1") && e.contains("text"), "{e}");
        std::fs::remove_dir_all(&d).ok();
    }
}
