//! A fault-injecting source: wraps any source and, on a fixed schedule, drops frames, fails
//! (as a vanished camera does), corrupts frames (as a broken MJPEG does) and stalls.
//! Deterministic, so tests can say which frames must arrive.

use super::{convert, Frame, FrameSource, Next};
use std::time::Duration;

#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Drop every n-th frame silently (0 = never).
    pub drop_every: u64,
    /// Turn every n-th frame into undecodable bytes run through the MJPEG decoder.
    pub corrupt_every: u64,
    /// Frames numbered in this range (1-based, inclusive) fail as if the device vanished.
    pub outage: Option<(u64, u64)>,
    /// Sleep this long before every n-th frame.
    pub stall_every: u64,
    pub stall: Duration,
}

pub struct FaultSource<S> {
    inner: S,
    faults: Faults,
    n: u64,
}

impl<S: FrameSource> FaultSource<S> {
    pub fn new(inner: S, faults: Faults) -> Self {
        FaultSource {
            inner,
            faults,
            n: 0,
        }
    }
}

fn every(n: u64, k: u64) -> bool {
    k > 0 && n.is_multiple_of(k)
}

impl<S: FrameSource> FrameSource for FaultSource<S> {
    fn id(&self) -> &str {
        self.inner.id()
    }

    fn is_live(&self) -> bool {
        self.inner.is_live()
    }

    fn next(&mut self) -> Next {
        loop {
            self.n += 1;
            let n = self.n;
            if let Some((a, b)) = self.faults.outage {
                if (a..=b).contains(&n) {
                    return Next::Failed(format!("injected: device vanished (frame {n})"));
                }
            }
            if every(n, self.faults.stall_every) {
                std::thread::sleep(self.faults.stall);
            }
            let next = self.inner.next();
            let Next::Frame(frame) = next else {
                return next;
            };
            if every(n, self.faults.drop_every) {
                continue;
            }
            if every(n, self.faults.corrupt_every) {
                // what a camera's torn MJPEG buffer looks like to the decoder
                let garbage = [0xFF, 0xD8, 0xFF, 0xDB, 0x00, 0x43, 0x13, 0x37];
                return match convert::mjpeg_to_rgb(&garbage) {
                    Ok(img) => Next::Frame(Frame {
                        image: image::DynamicImage::ImageRgb8(img),
                        ..frame
                    }),
                    Err(e) => Next::Failed(format!("injected corrupt frame: {e}")),
                };
            }
            return Next::Frame(frame);
        }
    }
}
