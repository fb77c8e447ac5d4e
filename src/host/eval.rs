//! `moonlens-host eval`: text→image retrieval recall of a bundle on a pairs file.
//!
//! Every distinct image is in the gallery; each caption is a query whose only relevant item
//! is its own image. Ranks count ties pessimistically (an equal score ranks above).

use super::pairs::{self, Pair};
use super::progress::Progress;
use crate::encoder::Encoder;
use crate::error::{Context, Result};
use std::path::Path;

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
    for chunk in images.chunks(crate::encoder::IMAGE_BATCH) {
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

pub fn eval(enc: &Encoder, pairs_path: &Path) -> Result<Recall> {
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
    let e = embed_pairs(enc, &pairs)?;
    Ok(recall(&ranks(&e.texts, &e.images, &e.truth)))
}

#[cfg(test)]
mod tests {
    use super::*;

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
