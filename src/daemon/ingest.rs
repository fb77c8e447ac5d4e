//! The ingest pipeline: capture thread → bounded queue → encode thread → index.
//!
//! Drop policy: the queue holds [`QUEUE_DEPTH`] frames. A live camera's frame that finds it
//! full is dropped and counted (the freshest frames win the next free place; memory stays
//! bounded whatever the camera does). A replay blocks instead and loses nothing.
//! Gates: a pixel-difference gate before encoding (a 32x32 grey miniature against the last
//! kept frame: saves the encoder's CPU on a still scene) and an embedding gate after (cosine
//! to the last stored embedding): both configurable, both counted.

use super::Shared;
use crate::protocol::HitView;
use crate::source::{FrameSource, Next};
use image::DynamicImage;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{sync_channel, Receiver, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const QUEUE_DEPTH: usize = 4;
pub const THUMB_SIDE: u32 = 160;

#[derive(Debug, Clone)]
pub struct Gates {
    /// Mean absolute difference (0..255) of the grey miniatures below which a frame is
    /// skipped; 0 turns the gate off.
    pub pixel_diff: f32,
    /// Cosine to the last stored embedding above which a frame is skipped; >= 1 is off.
    pub embedding_cos: f32,
}

impl Gates {
    pub const OFF: Gates = Gates {
        pixel_diff: 0.0,
        embedding_cos: 1.0,
    };
    pub const CAMERA: Gates = Gates {
        pixel_diff: 2.0,
        embedding_cos: 0.985,
    };
}

struct Queued {
    image: DynamicImage,
    label: String,
    ts_ms: i64,
}

fn miniature(img: &DynamicImage) -> Vec<u8> {
    image::imageops::thumbnail(&img.to_luma8(), 32, 32).into_raw()
}

/// JPEG of about [`THUMB_SIDE`] px on the long side that fits a thumbnail slot.
pub fn thumbnail(img: &DynamicImage) -> Vec<u8> {
    let t = img.thumbnail(THUMB_SIDE, THUMB_SIDE).to_rgb8();
    for quality in [80, 60, 40] {
        let mut out = Vec::new();
        let ok = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality)
            .encode_image(&t)
            .is_ok();
        if ok && out.len() <= crate::index::THUMB_SLOT {
            return out;
        }
    }
    Vec::new()
}

/// Starts the two ingest threads ([`capture_loop`], [`encode_loop`]); they run until the
/// source is done. A thread that cannot start is the one startup failure here: the daemon
/// without ingest would answer with a frozen index and look healthy.
pub fn start(shared: Arc<Shared>, source: Box<dyn FrameSource>, gates: Gates) {
    let (tx, rx) = sync_channel::<Queued>(QUEUE_DEPTH);
    let capture = shared.clone();
    std::thread::Builder::new()
        .name("capture".into())
        .spawn(move || capture_loop(&capture, source, tx, gates.pixel_diff))
        .expect("spawn capture thread");
    std::thread::Builder::new()
        .name("encode".into())
        .spawn(move || encode_loop(shared, rx, gates.embedding_cos))
        .expect("spawn encode thread");
}

/// Pulls frames from the source, drops still ones (pixel gate) and queues the rest: a live
/// camera's frame that finds the queue full is dropped, a replay waits. Source failures are
/// counted and logged at most every 5 s; the loop keeps pulling (a camera may come back).
fn capture_loop(
    s: &Shared,
    mut source: Box<dyn FrameSource>,
    tx: std::sync::mpsc::SyncSender<Queued>,
    pixel_gate: f32,
) {
    let live = source.is_live();
    let mut last_mini: Option<Vec<u8>> = None;
    let mut last_log = Instant::now() - Duration::from_secs(60);
    loop {
        match source.next() {
            Next::Done => {
                log::info!("source {} finished", source.id());
                return;
            }
            Next::Failed(e) => {
                s.counters.source_errors.fetch_add(1, Relaxed);
                if last_log.elapsed() > Duration::from_secs(5) {
                    log::warn!("source {}: {e}", source.id());
                    last_log = Instant::now();
                }
            }
            Next::Frame(f) => {
                if pixel_gate > 0.0 {
                    let mini = miniature(&f.image);
                    if let Some(prev) = &last_mini {
                        let diff = prev
                            .iter()
                            .zip(&mini)
                            .map(|(a, b)| a.abs_diff(*b) as f32)
                            .sum::<f32>()
                            / mini.len() as f32;
                        if diff < pixel_gate {
                            s.counters.gated.fetch_add(1, Relaxed);
                            continue;
                        }
                    }
                    last_mini = Some(mini);
                }
                let q = Queued {
                    image: f.image,
                    label: f.label,
                    ts_ms: f.ts_ms,
                };
                if live {
                    if let Err(TrySendError::Full(_)) = tx.try_send(q) {
                        s.counters.dropped.fetch_add(1, Relaxed);
                    }
                } else if tx.send(q).is_err() {
                    return; // the encode thread is gone
                }
            }
        }
    }
}

/// Encodes queued frames in batches, drops near-duplicates (embedding gate), stores the
/// rest and fires watches. Encoder and index failures are counted (`encode_errors`,
/// `store_errors`) and logged; the loop goes on with the next batch.
fn encode_loop(s: Arc<Shared>, rx: Receiver<Queued>, embedding_gate: f32) {
    let source_id = s.source_id.as_str();
    let mut last: Option<Vec<f32>> = None;
    while let Ok(first) = rx.recv() {
        // one batch at a time under the turn lock: a clean shutdown waits for it
        let _turn = s.ingest_turn.lock().unwrap_or_else(|p| p.into_inner());
        // take what else is already waiting, up to a batch
        let mut batch = vec![first];
        while batch.len() < crate::encoder::IMAGE_BATCH {
            match rx.try_recv() {
                Ok(q) => batch.push(q),
                Err(_) => break,
            }
        }
        // frames move out of the queue entries: no copy of the pixels on the hot path
        let (images, meta): (Vec<DynamicImage>, Vec<(String, i64)>) = batch
            .into_iter()
            .map(|q| (q.image, (q.label, q.ts_ms)))
            .unzip();
        // one model for the batch, from encoding to storing (a reload waits for it)
        let model = s.model();
        let embeddings = match model.encode_images(&images) {
            Ok(e) => e,
            Err(e) => {
                log::error!("encoding failed, {} frame(s) lost: {e}", images.len());
                s.counters
                    .encode_errors
                    .fetch_add(images.len() as u64, Relaxed);
                continue;
            }
        };
        for ((image, (label, ts_ms)), (emb, kept)) in images.iter().zip(meta).zip(embeddings) {
            if let Some(prev) = &last {
                let cos: f32 = prev.iter().zip(&emb).map(|(a, b)| a * b).sum();
                if cos > embedding_gate {
                    s.counters.gated.fetch_add(1, Relaxed);
                    continue;
                }
            }
            let thumb = thumbnail(image);
            match s
                .index
                .append_kept(ts_ms, source_id, &label, &emb, &thumb, Some(&kept))
            {
                Ok(seq) => {
                    s.counters.ingested.fetch_add(1, Relaxed);
                    log::debug!("stored frame {seq} ({label})");
                    let fired = s
                        .watches
                        .lock()
                        .expect("watches")
                        .observe(&emb, Instant::now());
                    for (watch, score) in fired {
                        let hit = HitView {
                            id: seq,
                            score,
                            ts_ms,
                            source: source_id.into(),
                            label: label.clone(),
                        };
                        log::info!(
                            "watch {watch} matched frame {seq} ({}) at {score:.3}",
                            label
                        );
                        s.push_match(watch, &hit);
                    }
                    last = Some(emb);
                }
                Err(e) => {
                    log::error!("index append failed: {e}");
                    s.counters.store_errors.fetch_add(1, Relaxed);
                }
            }
        }
    }
    s.source_done.store(true, Relaxed);
}
