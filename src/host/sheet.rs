//! `moonlens-host sheet`: a contact sheet of the top-k gallery images for a text query, with
//! rank, score and each image's caption: what a person wants to look at after training.

use super::eval::load_image;
use super::pairs;
use super::plot::{Canvas, BLACK, BLUE, GREY, ORANGE};
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
    let (images, _) = pairs::gallery(&pairs);
    let e = super::eval::embed_pairs(enc, &pairs)?;
    let q = enc.embed_text(query)?;
    let scored: Vec<Scored> = e
        .images
        .iter()
        .enumerate()
        .map(|(i, v)| (i, cosine(&q, v), None))
        .collect();
    draw(enc, &pairs, &images, scored, query, k, out)
}

/// [`sheet`] ranked as the daemon ranks with regions: global cosine + `lambda` × the best of
/// each image's 16 most confident regions; the best region of each hit is outlined. `enc`
/// must come from [`Encoder::load_with_regions`].
pub fn sheet_with_regions(
    enc: &Encoder,
    pairs_path: &Path,
    query: &str,
    k: usize,
    out: &Path,
    lambda: f32,
) -> Result<Vec<(String, f32)>> {
    use crate::encoder::regions::{cell_box, most_confident, query_part};
    let Some(tower) = enc.region_tower() else {
        crate::bail!("region scoring needs an encoder loaded with regions");
    };
    let pairs = pairs::read(pairs_path)?;
    let (images, _) = pairs::gallery(&pairs);
    let q = enc.embed_text(query)?;
    let part = query_part(enc.bundle(), &q, tower.width).ok_or_else(|| {
        crate::error::Error::new(format!(
            "{}: its query embeddings have no part in the regions' space",
            enc.bundle().dir.display()
        ))
    })?;
    let keep = crate::daemon::RegionPolicy::DEFAULT.keep;
    let mut scored = Vec::with_capacity(images.len());
    for (i, path) in images.iter().enumerate() {
        let img = load_image(path)?;
        let (g, _, regions) = enc.encode_regions(&img)?;
        let best = most_confident(regions, keep)
            .into_iter()
            .map(|r| (cosine(&part, &r.embedding), r.cell))
            .max_by(|a, b| a.0.total_cmp(&b.0));
        let (bonus, outline) = match best {
            Some((m, cell)) => {
                let spec = &enc.bundle().manifest.image;
                let b = cell_box(spec, tower.grid, cell, (img.width(), img.height()));
                (lambda * m, Some(b))
            }
            None => (0.0, None),
        };
        scored.push((i, cosine(&q, &g) + bonus, outline));
    }
    draw(enc, &pairs, &images, scored, query, k, out)
}

/// An image's index in the gallery, its score, and the box of its best region (image pixels).
type Scored = (usize, f32, Option<(f32, f32, f32, f32)>);

fn draw(
    enc: &Encoder,
    pairs: &[pairs::Pair],
    images: &[std::path::PathBuf],
    mut scored: Vec<Scored>,
    query: &str,
    k: usize,
    out: &Path,
) -> Result<Vec<(String, f32)>> {
    let (_, truth) = pairs::gallery(pairs);
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
    for (slot, (i, score, outline)) in scored.iter().enumerate() {
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
                if let Some((l, t, r, b)) = outline {
                    // the best region, from image pixels to the tile's
                    let s = thumb.width() as f32 / img.width().max(1) as f32;
                    let at = |v: f32, o: u32| (v * s) as i64 + (o + 2) as i64;
                    let (x0, y0, x1, y1) = (
                        at(*l, cx + ox),
                        at(*t, cy + oy),
                        at(*r, cx + ox),
                        at(*b, cy + oy),
                    );
                    for (p, q) in [
                        ((x0, y0), (x1, y0)),
                        ((x1, y0), (x1, y1)),
                        ((x1, y1), (x0, y1)),
                        ((x0, y1), (x0, y0)),
                    ] {
                        cv.line(p, q, ORANGE, 2);
                    }
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
