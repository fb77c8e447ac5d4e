//! `moonlens-host sheet`: a contact sheet of the top-k gallery images for a text query, with
//! rank, score and each image's caption: what a person wants to look at after training.

use super::eval::load_image;
use super::pairs;
use super::plot::{Canvas, BLACK, BLUE, GREY};
use crate::encoder::{cosine, Encoder};
use crate::error::Result;
use image::imageops::FilterType;
use std::path::Path;

const TILE: u32 = 180;
const COLS: u32 = 4;

/// Ranks the distinct images of `pairs_path` for `query`; draws the best `k` into `out`.
/// Returns (image path, score) of the drawn tiles, best first.
pub fn sheet(
    enc: &Encoder,
    pairs_path: &Path,
    query: &str,
    k: usize,
    out: &Path,
) -> Result<Vec<(String, f32)>> {
    let pairs = pairs::read(pairs_path)?;
    let (images, truth) = pairs::gallery(&pairs);
    let e = super::eval::embed_pairs(enc, &pairs)?;
    let q = enc.embed_text(query)?;
    let mut scored: Vec<(usize, f32)> = e
        .images
        .iter()
        .enumerate()
        .map(|(i, v)| (i, cosine(&q, v)))
        .collect();
    scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    scored.truncate(k.max(1));
    let rows = (scored.len() as u32).div_ceil(COLS);
    let (cell_w, cell_h) = (TILE + 20, TILE + 56);
    let mut cv = Canvas::new(COLS * cell_w + 20, rows * cell_h + 60);
    let title: String = query.chars().take(60).collect();
    cv.text(10, 10, &format!("QUERY: {title}"), 3, BLACK);
    cv.text(
        10,
        34,
        &format!("BUNDLE {}", enc.bundle().manifest.name),
        2,
        BLUE,
    );
    let mut drawn = Vec::new();
    for (slot, (i, score)) in scored.iter().enumerate() {
        let (cx, cy) = (
            10 + (slot as u32 % COLS) * cell_w,
            56 + (slot as u32 / COLS) * cell_h,
        );
        cv.fill(cx as i64, cy as i64, TILE as i64 + 4, TILE as i64 + 4, GREY);
        match load_image(&images[*i]) {
            Ok(img) => {
                let thumb = img.resize(TILE, TILE, FilterType::Triangle).to_rgba8();
                let (ox, oy) = ((TILE - thumb.width()) / 2, (TILE - thumb.height()) / 2);
                for (x, y, p) in thumb.enumerate_pixels() {
                    let a = p[3] as u32;
                    let mix = |c: u8| ((c as u32 * a + 255 * (255 - a)) / 255) as u8;
                    cv.img.put_pixel(
                        cx + 2 + ox + x,
                        cy + 2 + oy + y,
                        image::Rgb([mix(p[0]), mix(p[1]), mix(p[2])]),
                    );
                }
            }
            Err(e) => log::warn!("{e}"),
        }
        cv.text(
            cx as i64,
            (cy + TILE + 8) as i64,
            &format!("#{} {score:.3}", slot + 1),
            2,
            BLACK,
        );
        let caption = truth
            .iter()
            .position(|&t| t == *i)
            .map(|p| pairs[p].text.as_str())
            .unwrap_or("");
        let short: String = caption.chars().take(22).collect();
        cv.text(cx as i64, (cy + TILE + 26) as i64, &short, 2, BLUE);
        drawn.push((images[*i].display().to_string(), *score));
    }
    cv.save(out)?;
    Ok(drawn)
}
