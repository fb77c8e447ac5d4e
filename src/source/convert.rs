//! Camera pixel formats to RGB: packed YUYV 4:2:2 (BT.601, limited range, the webcam
//! default) and MJPEG. Both return an error for a buffer of the wrong size, never panic.

use crate::error::{Context, Result};
use image::RgbImage;

fn clamp(v: i32) -> u8 {
    v.clamp(0, 255) as u8
}

/// BT.601 limited range to RGB, integer arithmetic (coefficients scaled by 256).
fn yuv_to_rgb(y: u8, u: u8, v: u8) -> [u8; 3] {
    let c = y as i32 - 16;
    let d = u as i32 - 128;
    let e = v as i32 - 128;
    [
        clamp((298 * c + 409 * e + 128) >> 8),
        clamp((298 * c - 100 * d - 208 * e + 128) >> 8),
        clamp((298 * c + 516 * d + 128) >> 8),
    ]
}

/// `stride` is the bytes per line the driver reports (at least `2 * width`).
pub fn yuyv_to_rgb(buf: &[u8], width: u32, height: u32, stride: u32) -> Result<RgbImage> {
    let (w, h, stride) = (
        width as usize,
        height as usize,
        (stride as usize).max(2 * width as usize),
    );
    if w == 0 || h == 0 || w % 2 != 0 {
        crate::bail!("YUYV frame of {width}x{height}: width must be even and non-zero");
    }
    let need = stride * (h - 1) + 2 * w;
    if buf.len() < need {
        crate::bail!(
            "YUYV frame of {width}x{height} needs {need} bytes, buffer has {}",
            buf.len()
        );
    }
    let mut out = RgbImage::new(width, height);
    for y in 0..h {
        let row = &buf[y * stride..y * stride + 2 * w];
        for (x2, px) in row.chunks_exact(4).enumerate() {
            let (y0, u, y1, v) = (px[0], px[1], px[2], px[3]);
            out.put_pixel(2 * x2 as u32, y as u32, image::Rgb(yuv_to_rgb(y0, u, v)));
            out.put_pixel(
                2 * x2 as u32 + 1,
                y as u32,
                image::Rgb(yuv_to_rgb(y1, u, v)),
            );
        }
    }
    Ok(out)
}

pub fn mjpeg_to_rgb(buf: &[u8]) -> Result<RgbImage> {
    let img = image::load_from_memory_with_format(buf, image::ImageFormat::Jpeg)
        .context("MJPEG frame does not decode")?;
    Ok(img.to_rgb8())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yuyv_known_colours() {
        // black, white, and saturated red/blue per BT.601 limited range
        let buf = [
            16, 128, 235, 128, /* red */ 81, 90, 81, 240, /* blue */ 41, 240, 41, 110,
        ];
        let img = yuyv_to_rgb(&buf, 6, 1, 12).unwrap();
        assert_eq!(img.get_pixel(0, 0).0, [0, 0, 0]);
        assert_eq!(img.get_pixel(1, 0).0, [255, 255, 255]);
        let red = img.get_pixel(2, 0).0;
        assert!(red[0] > 240 && red[1] < 20 && red[2] < 20, "{red:?}");
        let blue = img.get_pixel(4, 0).0;
        assert!(blue[2] > 240 && blue[0] < 20 && blue[1] < 20, "{blue:?}");
    }

    #[test]
    fn yuyv_respects_stride_and_rejects_short_buffers() {
        let mut buf = vec![0u8; 16 * 2];
        buf[0..4].copy_from_slice(&[235, 128, 235, 128]);
        buf[16..20].copy_from_slice(&[16, 128, 16, 128]);
        let img = yuyv_to_rgb(&buf, 2, 2, 16).unwrap();
        assert_eq!(img.get_pixel(0, 0).0, [255, 255, 255]);
        assert_eq!(img.get_pixel(0, 1).0, [0, 0, 0]);
        assert!(yuyv_to_rgb(&buf[..10], 2, 2, 16).is_err());
        assert!(yuyv_to_rgb(&buf, 3, 1, 6).is_err());
    }

    #[test]
    fn mjpeg_round_trip_and_garbage() {
        let img = RgbImage::from_fn(32, 16, |x, _| image::Rgb([x as u8 * 8, 100, 200]));
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 95)
            .encode_image(&img)
            .unwrap();
        let back = mjpeg_to_rgb(&jpeg).unwrap();
        assert_eq!(back.dimensions(), (32, 16));
        let p = back.get_pixel(16, 8).0;
        assert!(
            (p[1] as i32 - 100).abs() < 8 && (p[2] as i32 - 200).abs() < 8,
            "{p:?}"
        );
        assert!(mjpeg_to_rgb(&jpeg[..jpeg.len() / 3]).is_err());
        assert!(mjpeg_to_rgb(b"not a jpeg").is_err());
    }
}
