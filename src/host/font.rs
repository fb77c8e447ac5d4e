//! Text in the pictures (contact sheets, training curves) through a real font that covers
//! CJK, so a sheet for 兔子 shows its query and captions in Chinese. The font comes from a
//! Debian package at run time (`fonts-wqy-microhei`, installed by `board/dev-setup.sh`;
//! Noto Sans CJK or WenQuanYi Zen Hei also do), or from the file `MOONLENS_FONT` names. No
//! font is vendored here. Without one, `plot` falls back to its 3x5 pixel font (ASCII only)
//! and says so once.

use ab_glyph::{point, Font, FontVec, PxScale, ScaleFont};
use std::sync::OnceLock;

/// Where Debian's CJK font packages put their fonts, in order of preference.
pub const CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
];

/// The font, loaded once: `MOONLENS_FONT`, else the first of [`CANDIDATES`] that parses.
pub fn font() -> Option<&'static FontVec> {
    static FONT: OnceLock<Option<FontVec>> = OnceLock::new();
    FONT.get_or_init(|| {
        let wanted = std::env::var("MOONLENS_FONT").ok();
        let found = wanted
            .iter()
            .map(String::as_str)
            .chain(CANDIDATES.iter().copied())
            .find_map(|p| {
                let bytes = std::fs::read(p).ok()?;
                FontVec::try_from_vec_and_index(bytes, 0)
                    .ok()
                    .map(|f| (p.to_string(), f))
            });
        match found {
            Some((path, f)) => {
                log::debug!("pictures use the font {path}");
                Some(f)
            }
            None => {
                log::warn!(
                    "no CJK font found ({}; or set MOONLENS_FONT): pictures fall back to a \
                     3x5 pixel font without Chinese; install fonts-wqy-microhei",
                    CANDIDATES.join(", ")
                );
                None
            }
        }
    })
    .as_ref()
}

/// Draws `s` with its top at `y`, glyphs `px` pixels high, calling `blend(x, y, coverage)`
/// for every covered pixel; returns the advance width.
pub fn draw(
    font: &FontVec,
    x: f32,
    y: f32,
    s: &str,
    px: f32,
    mut blend: impl FnMut(i64, i64, f32),
) -> f32 {
    let scaled = font.as_scaled(PxScale::from(px));
    let baseline = y + scaled.ascent();
    let mut caret = x;
    let mut prev = None;
    for ch in s.chars() {
        let id = font.glyph_id(ch);
        if let Some(p) = prev {
            caret += scaled.kern(p, id);
        }
        let glyph = id.with_scale_and_position(px, point(caret, baseline));
        caret += scaled.h_advance(id);
        prev = Some(id);
        if let Some(outlined) = font.outline_glyph(glyph) {
            let b = outlined.px_bounds();
            outlined.draw(|gx, gy, cov| {
                blend(b.min.x as i64 + gx as i64, b.min.y as i64 + gy as i64, cov)
            });
        }
    }
    caret - x
}
