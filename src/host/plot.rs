//! Pictures for people: the training curve and the contact sheet, drawn straight into an
//! RGB image with a built-in 3×5 pixel font (digits, A–Z and a little punctuation, scaled up),
//! so no font file or plotting crate is needed.

use super::train::Epoch;
use crate::error::{Context, Result};
use image::{Rgb, RgbImage};
use std::path::Path;

/// 3×5 glyphs, one string of 15 cells per character, row by row ('#' = ink).
fn glyph(c: char) -> Option<&'static str> {
    Some(match c.to_ascii_uppercase() {
        '0' => "####.##.##.####",
        '1' => ".#.##..#..#.###",
        '2' => "###..#####..###",
        '3' => "###..####..####",
        '4' => "#.##.####..#..#",
        '5' => "####..###..####",
        '6' => "####..####.####",
        '7' => "###..#..#.#..#.",
        '8' => "####.#####.####",
        '9' => "####.####..####",
        'A' => ".#.#.#####.##.#",
        'B' => "##.#.###.#.###.",
        'C' => "####..#..#..###",
        'D' => "##.#.##.##.###.",
        'E' => "####..####..###",
        'F' => "####..####..#..",
        'G' => "####..#.##.####",
        'H' => "#.##.#####.##.#",
        'I' => "###.#..#..#.###",
        'J' => "..#..#..##.####",
        'K' => "#.##.###.#.##.#",
        'L' => "#..#..#..#..###",
        'M' => "#.########.##.#",
        'N' => "##.#.##.##.##.#",
        'O' => "####.##.##.####",
        'P' => "####.#####..#..",
        'Q' => "####.##.####..#",
        'R' => "##.#.###.#.##.#",
        'S' => "####..###..####",
        'T' => "###.#..#..#..#.",
        'U' => "#.##.##.##.####",
        'V' => "#.##.##.##.#.#.",
        'W' => "#.##.########.#",
        'X' => "#.##.#.#.#.##.#",
        'Y' => "#.##.#.#..#..#.",
        'Z' => "###..#.#.#..###",
        '#' => "#.#####.#####.#",
        '.' => ".............#.",
        ',' => "..........#.#..",
        '-' => "......###......",
        ':' => "....#.....#....",
        '/' => "..#..#.#.#..#..",
        '=' => "...###...###...",
        '@' => "####.#####..###",
        '\'' => ".#..#..........",
        '"' => "#.##.#.........",
        '?' => "###..#.#.....#.",
        ' ' => "...............",
        '!' => ".#..#..#.....#.",
        '(' => "..#.#..#..#...#",
        ')' => "#...#..#..#.#..",
        '+' => "....#.###.#....",
        _ => return None,
    })
}

pub struct Canvas {
    pub img: RgbImage,
}

pub const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
pub const BLACK: Rgb<u8> = Rgb([20, 20, 20]);
pub const GREY: Rgb<u8> = Rgb([200, 200, 200]);
pub const BLUE: Rgb<u8> = Rgb([31, 119, 180]);
pub const ORANGE: Rgb<u8> = Rgb([230, 120, 20]);

impl Canvas {
    pub fn new(w: u32, h: u32) -> Canvas {
        Canvas {
            img: RgbImage::from_pixel(w, h, WHITE),
        }
    }

    pub fn put(&mut self, x: i64, y: i64, c: Rgb<u8>) {
        if x >= 0 && y >= 0 && (x as u32) < self.img.width() && (y as u32) < self.img.height() {
            self.img.put_pixel(x as u32, y as u32, c);
        }
    }

    pub fn fill(&mut self, x: i64, y: i64, w: i64, h: i64, c: Rgb<u8>) {
        for yy in y..y + h {
            for xx in x..x + w {
                self.put(xx, yy, c);
            }
        }
    }

    /// A line `thick` pixels wide (Bresenham with a square pen).
    pub fn line(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), c: Rgb<u8>, thick: i64) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        loop {
            self.fill(x - thick / 2, y - thick / 2, thick, thick, c);
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    /// Text at (x, y) (top left), about `7 * scale` pixels high, through the CJK font of
    /// [`super::font`] (anti-aliased), or the 3x5 pixel font where there is none. Returns the
    /// width drawn.
    pub fn text(&mut self, x: i64, y: i64, s: &str, scale: i64, c: Rgb<u8>) -> i64 {
        match super::font::font() {
            Some(f) => {
                let px = 7.0 * scale as f32;
                super::font::draw(f, x as f32, y as f32, s, px, |px_, py_, cov| {
                    self.blend(px_, py_, c, cov)
                })
                .ceil() as i64
            }
            None => self.pixel_text(x, y, s, scale, c),
        }
    }

    /// `c` over the pixel at (x, y) with opacity `alpha` (0..=1).
    pub fn blend(&mut self, x: i64, y: i64, c: Rgb<u8>, alpha: f32) {
        if x < 0 || y < 0 || x as u32 >= self.img.width() || y as u32 >= self.img.height() {
            return;
        }
        let a = alpha.clamp(0.0, 1.0);
        let p = self.img.get_pixel_mut(x as u32, y as u32);
        for (dst, src) in p.0.iter_mut().zip(c.0) {
            *dst = (*dst as f32 * (1.0 - a) + src as f32 * a).round() as u8;
        }
    }

    /// The built-in 3x5 pixel font, each font pixel `scale` pixels; characters it lacks are
    /// drawn as '?'. Returns the width drawn.
    pub fn pixel_text(&mut self, x: i64, y: i64, s: &str, scale: i64, c: Rgb<u8>) -> i64 {
        let mut cx = x;
        for ch in s.chars() {
            let g = glyph(ch).or_else(|| glyph('?')).expect("'?' has a glyph");
            for (i, cell) in g.bytes().enumerate() {
                if cell == b'#' {
                    let (gx, gy) = ((i % 3) as i64, (i / 3) as i64);
                    self.fill(cx + gx * scale, y + gy * scale, scale, scale, c);
                }
            }
            cx += 4 * scale;
        }
        cx - x
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        self.img
            .save(path)
            .context(format_args!("writing {}", path.display()))
    }
}

/// Training curve: train and validation loss per epoch, the kept epoch marked.
pub fn training_curve(history: &[Epoch], best_epoch: usize, path: &Path) -> Result<()> {
    let (w, h) = (720i64, 420i64);
    let (left, right, top, bottom) = (70i64, 20i64, 40i64, 50i64);
    let mut cv = Canvas::new(w as u32, h as u32);
    let losses: Vec<f64> = history
        .iter()
        .flat_map(|e| [e.train_loss, e.val_loss])
        .filter(|v| v.is_finite())
        .collect();
    let lo = losses
        .iter()
        .cloned()
        .fold(f64::INFINITY, f64::min)
        .min(0.0);
    let hi = losses
        .iter()
        .cloned()
        .fold(f64::NEG_INFINITY, f64::max)
        .max(lo + 1e-9);
    let n = history.len().max(2) as f64;
    let px =
        |epoch: usize| left + ((epoch as f64 - 1.0) / (n - 1.0) * (w - left - right) as f64) as i64;
    let py = |v: f64| top + ((hi - v) / (hi - lo) * (h - top - bottom) as f64) as i64;
    // axes and horizontal grid with labels
    for k in 0..=4 {
        let v = lo + (hi - lo) * k as f64 / 4.0;
        cv.line((left, py(v)), (w - right, py(v)), GREY, 1);
        cv.text(8, py(v) - 5, &format!("{v:.2}"), 2, BLACK);
    }
    cv.line((left, top), (left, h - bottom), BLACK, 2);
    cv.line((left, h - bottom), (w - right, h - bottom), BLACK, 2);
    let step = (history.len() / 10).max(1);
    for e in history.iter().step_by(step) {
        cv.text(
            px(e.epoch) - 4,
            h - bottom + 8,
            &e.epoch.to_string(),
            2,
            BLACK,
        );
    }
    cv.text(w / 2 - 30, h - 20, "EPOCH", 2, BLACK);
    for (series, color) in [(0, BLUE), (1, ORANGE)] {
        let pts: Vec<(i64, i64)> = history
            .iter()
            .map(|e| {
                let v = if series == 0 {
                    e.train_loss
                } else {
                    e.val_loss
                };
                (px(e.epoch), py(v))
            })
            .collect();
        for p in pts.windows(2) {
            cv.line(p[0], p[1], color, 3);
        }
        for p in &pts {
            cv.fill(p.0 - 3, p.1 - 3, 7, 7, color);
        }
    }
    if let Some(b) = history.iter().find(|e| e.epoch == best_epoch) {
        let x = px(b.epoch);
        for y in (top..h - bottom).step_by(8) {
            cv.line((x, y), (x, y + 3), BLACK, 1);
        }
    }
    cv.fill(left + 10, 12, 14, 6, BLUE);
    let tw = cv.text(left + 30, 10, "TRAIN LOSS", 2, BLACK);
    cv.fill(left + 50 + tw, 12, 14, 6, ORANGE);
    cv.text(
        left + 70 + tw,
        10,
        "VALIDATION LOSS   : KEPT EPOCH",
        2,
        BLACK,
    );
    cv.save(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_glyph_is_3x5() {
        for c in ('0'..='9')
            .chain('A'..='Z')
            .chain("#.,-:/=@'\"? !()+".chars())
        {
            let g = glyph(c).unwrap_or_else(|| panic!("no glyph for {c:?}"));
            assert_eq!(g.len(), 15, "glyph {c:?}");
        }
    }

    #[test]
    fn pixel_text_draws_ink() {
        let mut cv = Canvas::new(40, 10);
        let w = cv.pixel_text(1, 1, "R@1", 1, BLACK);
        assert_eq!(w, 12);
        let ink = cv.img.pixels().filter(|p| **p == BLACK).count();
        assert!(ink > 15, "{ink}");
    }

    /// Chinese gets real glyphs: each character its own ink, distinct from the other's.
    /// `board/dev-setup.sh` installs the font, so its absence is a failure, not a skip.
    #[test]
    fn chinese_text_draws_distinct_glyphs() {
        assert!(
            super::super::font::font().is_some(),
            "no CJK font: run board/dev-setup.sh (fonts-wqy-microhei) or set MOONLENS_FONT"
        );
        let ink = |s: &str| {
            let mut cv = Canvas::new(60, 30);
            let w = cv.text(2, 2, s, 3, BLACK);
            let dark: Vec<bool> = cv.img.pixels().map(|p| p.0[0] < 128).collect();
            (w, dark)
        };
        let (w_rabbit, rabbit) = ink("兔");
        let (_, moon) = ink("月");
        let count = |v: &[bool]| v.iter().filter(|d| **d).count();
        assert!(w_rabbit >= 15, "{w_rabbit}");
        assert!(
            count(&rabbit) > 40 && count(&moon) > 20,
            "{} {}",
            count(&rabbit),
            count(&moon)
        );
        assert_ne!(rabbit, moon);
    }
}
