//! `moonlens-host route`: trains the router of [`crate::encoder::language`] (English or
//! not, for queries the script rule leaves with the English tower) and adds it to a bundle
//! with a `[multilingual]` tower.
//!
//! Data: English is every text of the `--english` pairs files and every `source` of the
//! `--parallel` files; not English is every translation in the parallel files whose language
//! is not a variant of English (`en_*`), unless the same text is also English (names,
//! loanwords, untranslated captions). Only texts the script rule leaves with the English
//! tower take part: the router never sees the others. Model: logistic regression on the
//! distinct slots of [`features`], the two classes weighted equally, plain SGD with an L2
//! pull on the slots a step touches. The threshold is the lowest score (at least 0, i.e.
//! probability ½) at which at most `max_misroute` of the English validation texts would
//! leave the English tower: a misrouted English query costs more than a routed French one
//! gains (models/README.md).

use super::pairs;
use super::train::linalg::Rng;
use crate::bundle::Bundle;
use crate::encoder::language::{features, Router};
use crate::encoder::needs_multilingual;
use crate::error::{Context, Result};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

pub struct Options {
    pub buckets: usize,
    pub epochs: usize,
    pub max_misroute: f64,
    pub seed: u64,
}

/// Labelled texts: `true` = not English.
pub struct Texts {
    pub english: Vec<String>,
    /// (language, text)
    pub other: Vec<(String, String)>,
}

/// Reads the English and the translated texts of the given files, as the module doc says.
pub fn texts(english_files: &[PathBuf], parallel_files: &[PathBuf]) -> Result<Texts> {
    let mut english: Vec<String> = Vec::new();
    for f in english_files {
        english.extend(pairs::read(f)?.into_iter().map(|p| p.text));
    }
    let mut other = Vec::new();
    for f in parallel_files {
        for l in pairs::read_parallel(f)? {
            if l.lang.starts_with("en") || l.text == l.source {
                english.push(l.text);
            } else {
                english.push(l.source);
                other.push((l.lang, l.text));
            }
        }
    }
    english.retain(|t| !needs_multilingual(t));
    english.sort();
    english.dedup();
    let known: HashSet<String> = english.iter().map(|t| t.to_lowercase()).collect();
    other.retain(|(_, t)| !needs_multilingual(t) && !known.contains(&t.to_lowercase()));
    other.sort();
    other.dedup();
    Ok(Texts { english, other })
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Trains the weights and bias (threshold 0) on `train`.
pub fn fit(train: &Texts, opt: &Options) -> Router {
    let rows: Vec<(Vec<usize>, f64)> = (train.english.iter().map(|t| (t.as_str(), 0.0)))
        .chain(train.other.iter().map(|(_, t)| (t.as_str(), 1.0)))
        .map(|(t, y)| (features(t, opt.buckets), y))
        .filter(|(f, _)| !f.is_empty())
        .collect();
    let n_other = rows.iter().filter(|r| r.1 == 1.0).count().max(1) as f64;
    let n_english = (rows.len() as f64 - n_other).max(1.0);
    let class_weight =
        |y: f64| rows.len() as f64 / (2.0 * if y == 1.0 { n_other } else { n_english });
    let (mut w, mut bias) = (vec![0f64; opt.buckets], 0f64);
    let mut order: Vec<usize> = (0..rows.len()).collect();
    let mut rng = Rng::new(opt.seed);
    let l2 = 1e-5;
    for epoch in 0..opt.epochs {
        rng.shuffle(&mut order);
        let lr = 0.2 / (1.0 + epoch as f64);
        for &i in &order {
            let (f, y) = &rows[i];
            let s = bias + f.iter().map(|&k| w[k]).sum::<f64>();
            let g = (sigmoid(s) - y) * class_weight(*y);
            bias -= lr * g;
            for &k in f {
                w[k] -= lr * (g + l2 * w[k]);
            }
        }
    }
    Router {
        weights: w.iter().map(|&x| x as f32).collect(),
        bias: bias as f32,
        threshold: 0.0,
    }
}

/// The lowest threshold ≥ 0 that sends at most `max_misroute` of `english` elsewhere.
pub fn threshold(router: &Router, english: &[String], max_misroute: f64) -> f32 {
    let mut scores: Vec<f32> = english.iter().map(|t| router.score(t)).collect();
    scores.sort_by(|a, b| b.total_cmp(a));
    let allowed = (max_misroute * scores.len() as f64).floor() as usize;
    // above the (allowed+1)-th highest English score, at most `allowed` English texts remain
    scores.get(allowed).map_or(0.0, |&s| s.max(0.0))
}

/// How the router sends each validation set: the share of English kept, and per language
/// the share sent to the multilingual tower.
#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub english_kept: f64,
    pub english_texts: usize,
    pub other_routed: f64,
    pub other_texts: usize,
    pub by_language: BTreeMap<String, f64>,
    pub threshold: f32,
    pub train_english: usize,
    pub train_other: usize,
}

pub fn report(router: &Router, val: &Texts, train: &Texts) -> Report {
    let kept = val.english.iter().filter(|t| router.is_english(t)).count();
    let mut per: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for (lang, t) in &val.other {
        let e = per.entry(lang.clone()).or_default();
        e.1 += 1;
        e.0 += usize::from(!router.is_english(t));
    }
    let routed: usize = per.values().map(|v| v.0).sum();
    Report {
        english_kept: kept as f64 / val.english.len().max(1) as f64,
        english_texts: val.english.len(),
        other_routed: routed as f64 / val.other.len().max(1) as f64,
        other_texts: val.other.len(),
        by_language: per
            .into_iter()
            .map(|(l, (r, n))| (l, r as f64 / n as f64))
            .collect(),
        threshold: router.threshold,
        train_english: train.english.len(),
        train_other: train.other.len(),
    }
}

/// Writes `route.bin` into `bundle` and names it in `[multilingual]` (and `[sha256]`); the
/// bundle's id changes with its bundle.toml.
pub fn install(bundle: &Bundle, router: &Router, summary: &str) -> Result<Bundle> {
    const FILE: &str = "route.bin";
    let mut manifest = bundle.manifest.clone();
    let Some(multi) = manifest.multilingual.as_mut() else {
        crate::bail!(
            "{} has no [multilingual] tower: a router only decides between two text towers \
             (add one with `moonlens-host distill` and `export --teacher`)",
            bundle.dir.display()
        );
    };
    multi.route = Some(FILE.into());
    let path = bundle.dir.join(FILE);
    std::fs::write(&path, router.to_bytes()).context(format_args!("writing {}", path.display()))?;
    manifest
        .sha256
        .insert(FILE.into(), crate::bundle::sha256_file(&path)?);
    manifest
        .provenance
        .get_or_insert_with(Default::default)
        .insert("route".into(), toml::Value::String(summary.into()));
    super::export::write_manifest(&bundle.dir, &manifest, "`moonlens-host route`")
}

/// The `route` command: train on `train`, choose the threshold on `val`, install.
pub fn run(bundle: &Path, train: &Texts, val: &Texts, opt: &Options) -> Result<(Bundle, Report)> {
    let bundle = Bundle::open(bundle)?;
    if train.english.is_empty() || train.other.is_empty() || val.english.is_empty() {
        crate::bail!(
            "need English and other-language training texts and English validation texts \
             (written without accents: the others are routed by script)"
        );
    }
    let mut router = fit(train, opt);
    router.threshold = threshold(&router, &val.english, opt.max_misroute);
    let r = report(&router, val, train);
    let summary = format!(
        "moonlens-host route: logistic regression over {} hashed character n-gram slots, {} \
         English and {} other training texts; threshold {:.3} keeps {:.3} of the English \
         validation texts",
        opt.buckets, r.train_english, r.train_other, r.threshold, r.english_kept
    );
    Ok((install(&bundle, &router, &summary)?, r))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(english: &[&str], other: &[&str]) -> Texts {
        Texts {
            english: english.iter().map(|s| s.to_string()).collect(),
            other: other.iter().map(|s| ("xx".into(), s.to_string())).collect(),
        }
    }

    #[test]
    fn learns_to_tell_languages_apart_and_keeps_english() {
        let train = texts(
            &[
                "a rabbit",
                "the full moon",
                "a red lantern",
                "a little pig",
                "the cat",
                "a wild boar",
                "the blackbird",
                "a whale in the sea",
                "the moon cake",
                "a brown slug",
                "a green frog",
                "the crab",
            ],
            &[
                "un lapin",
                "la pleine lune",
                "une lanterne rouge",
                "un petit cochon",
                "le chat",
                "un sanglier",
                "le merle",
                "une baleine dans la mer",
                "le gateau de lune",
                "une limace",
                "une grenouille verte",
                "le crabe",
            ],
        );
        let opt = Options {
            buckets: 4096,
            epochs: 30,
            max_misroute: 0.0,
            seed: 1,
        };
        let mut r = fit(&train, &opt);
        let val = texts(&["a lantern", "the rabbit"], &["une lune", "le lapin"]);
        r.threshold = threshold(&r, &val.english, 0.0);
        assert!(val.english.iter().all(|t| r.is_english(t)), "{r:?}");
        let rep = report(&r, &val, &train);
        assert_eq!(rep.english_kept, 1.0);
        assert!(rep.other_routed >= 0.5, "{rep:?}");
    }

    #[test]
    fn threshold_allows_at_most_the_asked_share() {
        let r = Router {
            weights: vec![1.0; 1],
            bias: 0.0,
            threshold: 0.0,
        };
        // every word lands in slot 0: score = 1 for any text with a letter
        let english: Vec<String> = (0..10).map(|i| format!("w{i}")).collect();
        assert_eq!(threshold(&r, &english, 0.0), 1.0, "all English stay");
        let r2 = Router { bias: -5.0, ..r };
        assert_eq!(
            threshold(&r2, &english, 0.0),
            0.0,
            "never below 0 (probability ½)"
        );
    }

    #[test]
    fn translations_that_are_also_english_are_not_other() {
        let dir = std::env::temp_dir().join(format!("moonlens-route-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("p.jsonl");
        std::fs::write(
            &p,
            concat!(
                r#"{"source": "A cat.", "text": "Un chat.", "lang": "fr"}"#,
                "\n",
                r#"{"source": "A DVD.", "text": "DVD", "lang": "zh_CN"}"#,
                "\n",
                r#"{"source": "DVD", "text": "DVD", "lang": "ja"}"#,
                "\n",
                r#"{"source": "A cat.", "text": "Eine Katze.", "lang": "de"}"#,
                "\n",
                r#"{"source": "A cat.", "text": "A cat.", "lang": "en_GB"}"#,
                "\n",
                r#"{"source": "A cat.", "text": "Une chèvre.", "lang": "fr"}"#,
                "\n",
            ),
        )
        .unwrap();
        let t = super::texts(&[], &[p]).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(t.english, ["A DVD.", "A cat.", "DVD"]);
        let other: Vec<&str> = t.other.iter().map(|(_, s)| s.as_str()).collect();
        assert_eq!(
            other,
            ["Eine Katze.", "Un chat."],
            "accented text is routed by script"
        );
    }
}
