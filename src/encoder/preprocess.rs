//! Image preprocessing: exactly what `models/convert/imgprep.py` (the Python reference) does.
//!
//! Alpha composited onto the bundle's background; short side resized to `resize` with a
//! separable antialiased filter, triangle or bicubic as `[image] resample` says (support
//! grows with the downscale factor, pixel centres sampled, as PIL's BILINEAR and BICUBIC); centre crop `crop`; `(x - mean) / std`; NCHW f32. Only the cropped region
//! is resampled, so a 1080p frame costs two small passes, not a full resize.

use crate::bundle::{ChannelOrder, ImageTower, Resample};
use image::DynamicImage;

/// Input-to-output weights for output pixels `offset..offset + count` of a resize
/// `in_size -> out_size`: for each output pixel the first input index and its taps.
fn weights(
    filter: Resample,
    in_size: usize,
    out_size: usize,
    offset: usize,
    count: usize,
) -> Vec<(usize, Vec<f32>)> {
    let scale = in_size as f64 / out_size as f64;
    let stretch = scale.max(1.0);
    let (radius, kernel): (f64, fn(f64) -> f64) = match filter {
        Resample::Triangle => (1.0, |x| (1.0 - x.abs()).max(0.0)),
        // Keys' cubic with a = -0.5, PIL's BICUBIC (what CLIP's preprocessing uses)
        Resample::Bicubic => (2.0, |x| {
            let (a, x) = (-0.5, x.abs());
            if x < 1.0 {
                ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
            } else if x < 2.0 {
                (((x - 5.0) * x + 8.0) * x - 4.0) * a
            } else {
                0.0
            }
        }),
    };
    let support = radius * stretch;
    (0..count)
        .map(|j| {
            let centre = (offset + j) as f64 * scale + 0.5 * scale;
            let lo = ((centre - support).floor().max(0.0)) as usize;
            let hi = ((centre + support).ceil() as usize).min(in_size);
            let mut taps: Vec<f64> = (lo..hi)
                .map(|i| kernel((i as f64 + 0.5 - centre) / stretch))
                .collect();
            let sum: f64 = taps.iter().sum();
            if sum == 0.0 {
                let i = (centre as usize).min(in_size - 1);
                return (i, vec![1.0]);
            }
            taps.iter_mut().for_each(|t| *t /= sum);
            (lo, taps.into_iter().map(|t| t as f32).collect())
        })
        .collect()
}

/// (new height, new width, crop top, crop left) for an image of `h` x `w`.
pub fn geometry(h: usize, w: usize, resize: usize, crop: usize) -> (usize, usize, usize, usize) {
    let s = resize as f64 / h.min(w) as f64;
    let (nh, nw) = if h <= w {
        (resize, crop.max((w as f64 * s + 0.5).floor() as usize))
    } else {
        (crop.max((h as f64 * s + 0.5).floor() as usize), resize)
    };
    (nh, nw, (nh - crop) / 2, (nw - crop) / 2)
}

/// Decoded pixels as f32 RGB, 0..255, alpha composited onto `background`.
fn rgb_f32(img: &DynamicImage, background: [u8; 3]) -> (usize, usize, Vec<f32>) {
    let (w, h) = (img.width() as usize, img.height() as usize);
    if img.color().has_alpha() {
        let rgba = img.to_rgba8();
        let bg = background.map(|b| b as f32);
        let mut out = Vec::with_capacity(w * h * 3);
        for p in rgba.pixels() {
            let a = p[3] as f32 / 255.0;
            for c in 0..3 {
                out.push(p[c] as f32 * a + bg[c] * (1.0 - a));
            }
        }
        (h, w, out)
    } else {
        let rgb = img.to_rgb8();
        (h, w, rgb.into_raw().into_iter().map(|v| v as f32).collect())
    }
}

/// The network input for one image: `3 * crop * crop` f32 in CHW order.
pub fn preprocess(img: &DynamicImage, spec: &ImageTower) -> Vec<f32> {
    let crop = spec.crop as usize;
    let (h, w, px) = rgb_f32(img, spec.background);
    let (nh, nw, top, left) = geometry(h, w, spec.resize as usize, crop);
    let wx = weights(spec.resample, w, nw, left, crop);
    let wy = weights(spec.resample, h, nh, top, crop);
    // horizontal pass over every input row: tmp[y][x][c]
    let mut tmp = vec![0f32; h * crop * 3];
    for y in 0..h {
        let row = &px[y * w * 3..(y + 1) * w * 3];
        for (x, (lo, taps)) in wx.iter().enumerate() {
            let mut acc = [0f32; 3];
            for (k, t) in taps.iter().enumerate() {
                let p = &row[(lo + k) * 3..(lo + k) * 3 + 3];
                acc[0] += t * p[0];
                acc[1] += t * p[1];
                acc[2] += t * p[2];
            }
            tmp[(y * crop + x) * 3..(y * crop + x) * 3 + 3].copy_from_slice(&acc);
        }
    }
    // vertical pass, normalization and channel order: out[c][y][x]
    let order = match spec.channel_order {
        ChannelOrder::Rgb => [0, 1, 2],
        ChannelOrder::Bgr => [2, 1, 0],
    };
    let mut out = vec![0f32; 3 * crop * crop];
    for (y, (lo, taps)) in wy.iter().enumerate() {
        for x in 0..crop {
            let mut acc = [0f32; 3];
            for (k, t) in taps.iter().enumerate() {
                let p = &tmp[((lo + k) * crop + x) * 3..((lo + k) * crop + x) * 3 + 3];
                acc[0] += t * p[0];
                acc[1] += t * p[1];
                acc[2] += t * p[2];
            }
            for (dst, &src) in order.iter().enumerate() {
                out[(dst * crop + y) * crop + x] = (acc[src] - spec.mean[src]) / spec.std[src];
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_keeps_short_side_and_centres_the_crop() {
        assert_eq!(geometry(480, 640, 256, 224), (256, 341, 16, 58));
        assert_eq!(geometry(640, 480, 256, 224), (341, 256, 58, 16));
        assert_eq!(geometry(10, 10, 256, 224), (256, 256, 16, 16));
    }

    #[test]
    fn weights_sum_to_one_and_stay_in_bounds() {
        for filter in [Resample::Triangle, Resample::Bicubic] {
            for (inp, out) in [(1000, 256), (37, 256), (256, 256), (1, 256)] {
                for (lo, taps) in weights(filter, inp, out, 0, out) {
                    assert!(lo + taps.len() <= inp);
                    assert!((taps.iter().sum::<f32>() - 1.0).abs() < 1e-5);
                }
            }
        }
    }

    /// A bicubic resize at scale 1 samples pixel centres exactly: it is the identity, where
    /// the triangle at scale 1 is too; at 2x down it has its negative lobes.
    #[test]
    fn bicubic_taps_are_keys_cubic() {
        for (lo, taps) in weights(Resample::Bicubic, 8, 8, 0, 8) {
            let one: Vec<f32> = taps.iter().copied().filter(|t| t.abs() > 1e-6).collect();
            assert_eq!(one, vec![1.0], "{lo} {taps:?}");
        }
        let (_, taps) = &weights(Resample::Bicubic, 16, 8, 2, 1)[0];
        assert!(taps.iter().any(|&t| t < 0.0), "{taps:?}");
        assert_eq!(taps.len(), 8);
    }
}
