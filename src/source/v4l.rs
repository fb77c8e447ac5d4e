//! `v4l:/dev/videoN`: a V4L2 camera through the `v4l` crate, YUYV or MJPEG.
//!
//! When the device disappears (unplugged, driver reset) the source reports the failure,
//! closes everything and retries with exponential backoff (0.5 s doubling to 30 s); queries
//! keep being served meanwhile, and capture resumes when the device returns.

use super::{convert, now_ms, Frame, FrameSource, Next, SourceOptions};
use crate::error::{Context, Result};
use std::time::{Duration, Instant};
use v4l::buffer::Type;
use v4l::io::traits::CaptureStream;
use v4l::prelude::*;
use v4l::video::Capture;
use v4l::FourCC;

struct Open {
    // the stream must drop before the device: declared first
    stream: MmapStream<'static>,
    _dev: Device,
    format: v4l::Format,
}

pub struct V4lSource {
    path: String,
    opts: SourceOptions,
    open: Option<Open>,
    backoff: Duration,
    retry_at: Option<Instant>,
    label: String,
}

impl V4lSource {
    pub fn new(path: &str, opts: &SourceOptions) -> V4lSource {
        let label = path.rsplit('/').next().unwrap_or(path).to_string();
        V4lSource {
            path: path.into(),
            opts: opts.clone(),
            open: None,
            backoff: Duration::from_millis(500),
            retry_at: None,
            label,
        }
    }

    fn try_open(&self) -> Result<Open> {
        let dev = Device::with_path(&self.path)
            .context(format_args!("{}: cannot open the camera", self.path))?;
        let mut fmt = dev.format().context("reading the camera format")?;
        fmt.width = self.opts.width;
        fmt.height = self.opts.height;
        fmt.fourcc = FourCC::new(b"YUYV");
        let mut got = dev.set_format(&fmt).context("setting the camera format")?;
        if got.fourcc != FourCC::new(b"YUYV") {
            fmt.fourcc = FourCC::new(b"MJPG");
            got = dev.set_format(&fmt).context("setting the camera format")?;
        }
        if got.fourcc != FourCC::new(b"YUYV") && got.fourcc != FourCC::new(b"MJPG") {
            crate::bail!(
                "{}: camera offers neither YUYV nor MJPEG (got {})",
                self.path,
                got.fourcc
            );
        }
        let fps = self.opts.fps.round().max(1.0) as u32;
        if let Err(e) = dev.set_params(&v4l::video::capture::Parameters::with_fps(fps)) {
            log::warn!("{}: cannot set {fps} fps: {e}", self.path);
        }
        let mut stream = MmapStream::with_buffers(&dev, Type::VideoCapture, 4)
            .context("starting the capture stream")?;
        stream.set_timeout(Duration::from_secs(5));
        log::info!(
            "{}: capturing {}x{} {} at {fps} fps",
            self.path,
            got.width,
            got.height,
            got.fourcc
        );
        Ok(Open {
            stream,
            _dev: dev,
            format: got,
        })
    }

    fn fail(&mut self, msg: String) -> Next {
        self.open = None;
        self.retry_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(Duration::from_secs(30));
        Next::Failed(msg)
    }
}

impl FrameSource for V4lSource {
    fn id(&self) -> &str {
        &self.label
    }

    fn is_live(&self) -> bool {
        true
    }

    fn next(&mut self) -> Next {
        if self.open.is_none() {
            if let Some(t) = self.retry_at {
                let now = Instant::now();
                if t > now {
                    std::thread::sleep(t - now);
                }
            }
            match self.try_open() {
                Ok(o) => {
                    self.open = Some(o);
                    self.backoff = Duration::from_millis(500);
                }
                Err(e) => return self.fail(e.to_string()),
            }
        }
        let open = self.open.as_mut().expect("opened above");
        let f = open.format;
        let converted = match open.stream.next() {
            Err(e) => return self.fail(format!("{}: capture failed: {e}", self.path)),
            Ok((buf, meta)) => {
                let used = (meta.bytesused as usize).min(buf.len());
                if f.fourcc == FourCC::new(b"MJPG") {
                    convert::mjpeg_to_rgb(&buf[..used])
                } else {
                    convert::yuyv_to_rgb(&buf[..used], f.width, f.height, f.stride)
                }
            }
        };
        match converted {
            Ok(img) => Next::Frame(Frame {
                image: image::DynamicImage::ImageRgb8(img),
                label: self.label.clone(),
                ts_ms: now_ms(),
            }),
            // a single bad buffer is not a vanished device: keep the stream
            Err(e) => Next::Failed(format!("{}: {e}", self.path)),
        }
    }
}
