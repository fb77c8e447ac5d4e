//! `moonlens-host eval`: text→image retrieval recall of a bundle on a pairs file.
//!
//! Every distinct image is in the gallery; each caption is a query whose only relevant item
//! is its own image. Ranks count ties pessimistically (an equal score ranks above).

use super::pairs::{self, Pair};
use super::progress::Progress;
use crate::encoder::Encoder;
use crate::error::{Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Recall {
    pub n: usize,
    pub r1: f64,
    pub r5: f64,
    pub r10: f64,
    pub median_rank: f64,
}

/// 1-based pessimistic rank of `truth[q]` for each query.
pub fn ranks(text: &[Vec<f32>], images: &[Vec<f32>], truth: &[usize]) -> Vec<usize> {
    text.iter()
        .zip(truth)
        .map(|(t, &own)| {
            let score = |img: &Vec<f32>| -> f32 { t.iter().zip(img).map(|(a, b)| a * b).sum() };
            let s_own = score(&images[own]);
            images.iter().filter(|img| score(img) >= s_own).count()
        })
        .collect()
}

pub fn recall(ranks: &[usize]) -> Recall {
    let n = ranks.len();
    let at = |k: usize| ranks.iter().filter(|&&r| r <= k).count() as f64 / n.max(1) as f64;
    let mut sorted = ranks.to_vec();
    sorted.sort_unstable();
    let median_rank = if n == 0 {
        0.0
    } else if n % 2 == 1 {
        sorted[n / 2] as f64
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) as f64 / 2.0
    };
    Recall {
        n,
        r1: at(1),
        r5: at(5),
        r10: at(10),
        median_rank,
    }
}

pub fn load_image(path: &Path) -> Result<image::DynamicImage> {
    image::open(path).context(format_args!("cannot decode image {}", path.display()))
}

/// Embeddings of the gallery images and of the captions, and each caption's image index.
pub struct Embedded {
    pub images: Vec<Vec<f32>>,
    pub texts: Vec<Vec<f32>>,
    pub truth: Vec<usize>,
}

pub fn embed_pairs(enc: &Encoder, pairs: &[Pair]) -> Result<Embedded> {
    let (images, truth) = pairs::gallery(pairs);
    let mut bar = Progress::new("images", images.len());
    let mut img_emb = Vec::with_capacity(images.len());
    for chunk in images.chunks(8) {
        let decoded = chunk
            .iter()
            .map(|p| load_image(p))
            .collect::<Result<Vec<_>>>()?;
        img_emb.extend(enc.embed_images(&decoded)?);
        bar.inc(chunk.len());
    }
    let mut bar = Progress::new("captions", pairs.len());
    let mut txt_emb = Vec::with_capacity(pairs.len());
    for p in pairs {
        txt_emb.push(enc.embed_text(&p.text)?);
        bar.inc(1);
    }
    Ok(Embedded {
        images: img_emb,
        texts: txt_emb,
        truth,
    })
}

/// Recall overall and per group: the domain of each query's image (photo or drawing, by
/// [`domain`]) and its category (first directory under the images' common folder).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Report {
    #[serde(flatten)]
    pub overall: Recall,
    pub by_domain: BTreeMap<String, Recall>,
    pub by_category: BTreeMap<String, Recall>,
}

/// "photo" or "drawing". A heuristic on the pixels: drawings (cartoons, clip art, icons) are
/// flat fills, so the 8 most common colours (5 bits a channel) cover at least 35% of their
/// opaque pixels; photo cut-outs spread over hundreds of colours. On the Tux Paint test
/// split this agrees with a look at the stamps except for a few shaded cartoons. Files in a
/// folder named `cartoon` are drawings whatever their pixels say.
pub fn domain(path: &Path, img: &image::DynamicImage) -> &'static str {
    if path.components().any(|c| c.as_os_str() == "cartoon") {
        return "drawing";
    }
    let small = img.thumbnail(128, 128).to_rgba8();
    let mut counts = std::collections::HashMap::new();
    let mut opaque = 0usize;
    for p in small.pixels().filter(|p| p[3] > 250) {
        opaque += 1;
        let key = (p[0] >> 3, p[1] >> 3, p[2] >> 3);
        *counts.entry(key).or_insert(0usize) += 1;
    }
    let mut c: Vec<usize> = counts.into_values().collect();
    c.sort_unstable_by(|a, b| b.cmp(a));
    let top: usize = c.iter().take(8).sum();
    if opaque == 0 || top as f64 >= 0.35 * opaque as f64 {
        "drawing"
    } else {
        "photo"
    }
}

/// First directory of each path under the paths' common ancestor ("animals", "food", …).
pub fn categories(paths: &[PathBuf]) -> Vec<String> {
    let parents: Vec<Vec<_>> = paths
        .iter()
        .map(|p| p.parent().unwrap_or(Path::new("")).components().collect())
        .collect();
    let common = (0..)
        .take_while(|&i| {
            parents
                .first()
                .and_then(|f| f.get(i))
                .is_some_and(|c| parents.iter().all(|p| p.get(i) == Some(c)))
        })
        .count();
    parents
        .iter()
        .map(|p| {
            p.get(common)
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .unwrap_or_else(|| "(top)".into())
        })
        .collect()
}

fn grouped(ranks: &[usize], group_of_query: &[String]) -> BTreeMap<String, Recall> {
    let mut by: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (r, g) in ranks.iter().zip(group_of_query) {
        by.entry(g.clone()).or_default().push(*r);
    }
    by.into_iter().map(|(g, r)| (g, recall(&r))).collect()
}

pub fn eval(enc: &Encoder, pairs_path: &Path) -> Result<Report> {
    let pairs = read_pairs(pairs_path)?;
    let e = embed_pairs(enc, &pairs)?;
    report(&pairs, &ranks(&e.texts, &e.images, &e.truth))
}

/// How `eval --regions` scores a frame: global cosine + `lambda` × the best of its `cells`
/// most confident regions' cosines with the query's part in their space, for the best
/// [`crate::index::search::K_MAX`] of the global ranking (as the daemon's search does).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct RegionScoring {
    pub lambda: f32,
    pub cells: usize,
}

/// [`eval`] with region scoring, once per setting in `settings` (the images are encoded
/// once). `enc` must come from [`Encoder::load_with_regions`].
pub fn eval_regions(
    enc: &Encoder,
    pairs_path: &Path,
    settings: &[RegionScoring],
) -> Result<Vec<(RegionScoring, Report)>> {
    use crate::encoder::regions::{best_match, most_confident, query_part};
    use crate::index::search::K_MAX;
    let Some(tower) = enc.region_tower() else {
        crate::bail!("region scoring needs an encoder loaded with regions");
    };
    let pairs = read_pairs(pairs_path)?;
    let (images, truth) = pairs::gallery(&pairs);
    let mut bar = Progress::new("images and regions", images.len());
    let mut globals = Vec::with_capacity(images.len());
    let mut regions = Vec::with_capacity(images.len());
    for p in &images {
        let (g, _, r) = enc.encode_regions(&load_image(p)?)?;
        globals.push(g);
        regions.push(r);
        bar.inc(1);
    }
    let texts = pairs
        .iter()
        .map(|p| enc.embed_text(&p.text))
        .collect::<Result<Vec<_>>>()?;
    let parts = texts
        .iter()
        .map(|q| {
            query_part(enc.bundle(), q, tower.width).ok_or_else(|| {
                crate::error::Error::new(format!(
                    "{}: its query embeddings have no part in the regions' space (a bundle \
                     whose output is its base embedding, or one exported with --mix)",
                    enc.bundle().dir.display()
                ))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let dot = |a: &[f32], b: &[f32]| -> f32 { a.iter().zip(b).map(|(x, y)| x * y).sum() };
    settings
        .iter()
        .map(|s| {
            let kept: Vec<_> = regions
                .iter()
                .map(|r| most_confident(r.clone(), s.cells))
                .collect();
            // as the daemon searches: the global ranking's best K_MAX re-scored, the rest
            // below them in their global order
            let r: Vec<usize> = (0..texts.len())
                .map(|q| {
                    let global: Vec<f32> = globals.iter().map(|g| dot(&texts[q], g)).collect();
                    let own = truth[q];
                    let global_rank = global.iter().filter(|&&g| g >= global[own]).count();
                    if global_rank > K_MAX {
                        return global_rank;
                    }
                    let mut order: Vec<usize> = (0..global.len()).collect();
                    order.sort_by(|&a, &b| global[b].total_cmp(&global[a]));
                    order.truncate(K_MAX);
                    let score = |i: usize| global[i] + s.lambda * best_match(&parts[q], &kept[i]);
                    let mine = score(own);
                    order
                        .iter()
                        .filter(|&&i| i == own || score(i) >= mine)
                        .count()
                })
                .collect();
            Ok((*s, report(&pairs, &r)?))
        })
        .collect()
}

fn read_pairs(pairs_path: &Path) -> Result<Vec<Pair>> {
    let pairs = pairs::read(pairs_path)?;
    for p in &pairs {
        if !p.image.exists() {
            crate::bail!(
                "{}: image {} does not exist (paths are relative to the pairs file)",
                pairs_path.display(),
                p.image.display()
            );
        }
    }
    Ok(pairs)
}

/// Recall of `ranks` (one per pair) overall, by domain and by category.
fn report(pairs: &[Pair], r: &[usize]) -> Result<Report> {
    let (images, truth) = pairs::gallery(pairs);
    let domains = images
        .iter()
        .map(|p| Ok(domain(p, &load_image(p)?).to_string()))
        .collect::<Result<Vec<String>>>()?;
    let cats = categories(&images);
    let per_query = |g: &[String]| -> Vec<String> { truth.iter().map(|&i| g[i].clone()).collect() };
    Ok(Report {
        overall: recall(r),
        by_domain: grouped(r, &per_query(&domains)),
        by_category: grouped(r, &per_query(&cats)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_are_first_folders_under_the_common_root() {
        let p = |s: &str| PathBuf::from(s);
        let c = categories(&[
            p("x/stamps/animals/birds/duck.png"),
            p("x/stamps/food/pie.png"),
        ]);
        assert_eq!(c, vec!["animals", "food"]);
    }

    #[test]
    fn flat_fills_are_drawings_and_noise_is_a_photo() {
        let flat = image::DynamicImage::ImageRgba8(image::RgbaImage::from_fn(64, 64, |x, _| {
            if x < 32 {
                image::Rgba([200, 30, 30, 255])
            } else {
                image::Rgba([0, 0, 0, 255])
            }
        }));
        let mut rng = 12345u32;
        let noisy = image::DynamicImage::ImageRgba8(image::RgbaImage::from_fn(64, 64, |_, _| {
            rng = rng.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let b = rng.to_le_bytes();
            image::Rgba([b[1], b[2], b[3], 255])
        }));
        assert_eq!(domain(Path::new("a.png"), &flat), "drawing");
        assert_eq!(domain(Path::new("a.png"), &noisy), "photo");
        assert_eq!(domain(Path::new("v/cartoon/a.png"), &noisy), "drawing");
    }

    #[test]
    fn ties_count_against_the_query() {
        let imgs = vec![vec![1.0, 0.0], vec![1.0, 0.0], vec![0.0, 1.0]];
        let txt = vec![vec![1.0, 0.0], vec![0.0, 1.0]];
        // query 0's own image (0) ties with image 1: rank 2, not 1
        assert_eq!(ranks(&txt, &imgs, &[0, 2]), vec![2, 1]);
        let r = recall(&[2, 1]);
        assert_eq!((r.r1, r.r5, r.median_rank), (0.5, 1.0, 1.5));
    }
}
