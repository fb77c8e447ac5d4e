//! The ingest pipeline: capture thread → bounded queue → encode workers → index, in order.
//!
//! Encoding is the one costly step (the image tower, resizing, the thumbnail's JPEG), so it
//! runs on [`workers`] threads, one per core by default. Each worker takes the next frame
//! from the queue together with a ticket; frames are encoded side by side and stored in
//! ticket order, so the index holds frames in the order the source gave them, the embedding
//! gate compares each frame with the one stored before it, and watches fire in order. The
//! store step holds the ingest turn and the model (read): a reload that committed while a
//! frame was being encoded is noticed there and the frame is encoded again with the new
//! model, so no entry is stored in an old model's space. (Not batches through one plan
//! run: with tract that costs more per frame, see [`crate::encoder`].)
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
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Frames the queue holds per worker (a worker encodes one frame while the next waits).
pub const QUEUE_DEPTH: usize = 4;
/// At most this many encode workers, whatever the machine or the config says: each holds a
/// decoded frame and the tower's activations (~20 MB), so memory stays bounded.
pub const MAX_WORKERS: usize = 8;
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

/// How many encode workers: `--workers N` (1..=[`MAX_WORKERS`]) or one per core.
pub fn workers(configured: Option<usize>) -> usize {
    configured
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .clamp(1, MAX_WORKERS)
}

/// Starts the ingest threads ([`capture_loop`] and `workers` × [`encode_loop`]); they run
/// until the source is done. A thread that cannot start is the one startup failure here:
/// the daemon without ingest would answer with a frozen index and look healthy.
pub fn start(shared: Arc<Shared>, source: Box<dyn FrameSource>, gates: Gates, workers: usize) {
    let workers = workers.clamp(1, MAX_WORKERS);
    let (tx, rx) = sync_channel::<Queued>(QUEUE_DEPTH * workers);
    let capture = shared.clone();
    std::thread::Builder::new()
        .name("capture".into())
        .spawn(move || capture_loop(&capture, source, tx, gates.pixel_diff))
        .expect("spawn capture thread");
    let line = Arc::new(Line {
        queue: Mutex::new(Tickets { rx, next: 0 }),
        order: Mutex::new(Order {
            next: 0,
            last: None,
            running: workers,
        }),
        turn: Condvar::new(),
        embedding_gate: gates.embedding_cos,
    });
    log::info!("ingest: {workers} encode worker(s)");
    for i in 0..workers {
        let (s, line) = (shared.clone(), line.clone());
        std::thread::Builder::new()
            .name(format!("encode-{i}"))
            .spawn(move || encode_loop(&s, &line))
            .expect("spawn encode thread");
    }
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

/// The queue's receiving end and the ticket the next frame taken from it gets.
struct Tickets {
    rx: Receiver<Queued>,
    next: u64,
}

/// What the store step keeps between frames, under one lock: stores happen one at a time,
/// in ticket order.
struct Order {
    /// The ticket whose frame is stored next.
    next: u64,
    /// The last stored embedding (the embedding gate compares with it).
    last: Option<Vec<f32>>,
    /// Workers still running; the last one out marks the source done.
    running: usize,
}

/// What the encode workers share.
struct Line {
    queue: Mutex<Tickets>,
    order: Mutex<Order>,
    /// Signalled when `order.next` moves on.
    turn: Condvar,
    embedding_gate: f32,
}

/// A frame's place in the order. Dropping it passes the turn on, whether the frame was
/// stored, failed or its worker panicked, so one bad frame never stalls the line.
struct Ticket<'a> {
    line: &'a Line,
    n: u64,
}

impl Ticket<'_> {
    /// Waits for this ticket's turn; the guard holds the order's state.
    fn wait(&self) -> std::sync::MutexGuard<'_, Order> {
        let mut order = self.line.order.lock().unwrap_or_else(|p| p.into_inner());
        while order.next != self.n {
            order = self
                .line
                .turn
                .wait(order)
                .unwrap_or_else(|p| p.into_inner());
        }
        order
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let mut order = self.wait();
        order.next += 1;
        drop(order);
        self.line.turn.notify_all();
    }
}

/// Takes the next frame off the queue with its ticket (blocks); `None` when the source is
/// done and the queue empty.
fn take(line: &Line) -> Option<(Ticket<'_>, Queued)> {
    let mut q = line.queue.lock().unwrap_or_else(|p| p.into_inner());
    let frame = q.rx.recv().ok()?;
    let n = q.next;
    q.next += 1;
    Some((Ticket { line, n }, frame))
}

/// One frame, encoded: its embedding, the backbone outputs and regions the index keeps, its
/// thumbnail.
struct Encoded {
    embedding: Vec<f32>,
    kept: crate::index::Kept,
    /// the `keep` most confident regions (none when the model has no region tower)
    regions: Vec<Vec<f32>>,
    thumb: Vec<u8>,
}

fn encode(
    model: &crate::encoder::Encoder,
    image: &DynamicImage,
    keep: usize,
) -> crate::Result<Encoded> {
    let (embedding, kept, regions) = if model.region_tower().is_some() && keep > 0 {
        let (e, k, r) = model.encode_regions(image)?;
        let r = crate::encoder::regions::most_confident(r, keep);
        (e, k, r.into_iter().map(|r| r.embedding).collect())
    } else {
        let (e, k) = model
            .encode_images(std::slice::from_ref(image))?
            .pop()
            .ok_or_else(|| crate::Error::new("the image tower returned no row"))?;
        (e, k, Vec::new())
    };
    Ok(Encoded {
        embedding,
        kept,
        regions,
        thumb: thumbnail(image),
    })
}

/// One encode worker: takes frames, encodes them beside the other workers, stores them in
/// ticket order (dropping near-duplicates: the embedding gate) and fires watches. Encoder
/// and index failures are counted (`encode_errors`, `store_errors`) and logged; the loop
/// goes on with the next frame.
fn encode_loop(s: &Arc<Shared>, line: &Line) {
    while let Some((ticket, frame)) = take(line) {
        let model = s.encoder();
        let keep = s.regions.keep;
        let encoded = encode(&model, &frame.image, keep);
        let mut order = ticket.wait();
        // one frame at a time under the turn lock: a clean shutdown waits for it
        let _turn = s.ingest_turn.lock().unwrap_or_else(|p| p.into_inner());
        // the model from here to the end of the store (a reload's commit waits for it)
        let current = s.model();
        let encoded = if Arc::ptr_eq(&model, &current) {
            encoded
        } else {
            log::info!("the model changed while a frame was encoded: encoding it again");
            encode(&current, &frame.image, keep)
        };
        match encoded {
            Ok(e) => store(s, line.embedding_gate, &mut order, frame, e),
            Err(e) => {
                log::error!("encoding failed, frame {} lost: {e}", frame.label);
                s.counters.encode_errors.fetch_add(1, Relaxed);
            }
        }
        drop(current);
        drop(order); // the ticket's drop takes the order again to pass the turn on
    }
    let mut order = line.order.lock().unwrap_or_else(|p| p.into_inner());
    order.running -= 1;
    if order.running == 0 {
        s.source_done.store(true, Relaxed);
    }
}

/// Stores one encoded frame in order (the caller holds the turn and the model).
fn store(s: &Shared, gate: f32, order: &mut Order, frame: Queued, e: Encoded) {
    if let Some(prev) = &order.last {
        let cos: f32 = prev.iter().zip(&e.embedding).map(|(a, b)| a * b).sum();
        if cos > gate {
            s.counters.gated.fetch_add(1, Relaxed);
            return;
        }
    }
    let (source_id, label, ts_ms) = (s.source_id.as_str(), frame.label, frame.ts_ms);
    match s.index.append_frame(
        ts_ms,
        source_id,
        &label,
        &e.embedding,
        &e.thumb,
        Some(&e.kept),
        (!e.regions.is_empty()).then_some(e.regions.as_slice()),
    ) {
        Ok(seq) => {
            s.counters.ingested.fetch_add(1, Relaxed);
            log::debug!("stored frame {seq} ({label})");
            let fired = s
                .watches
                .lock()
                .expect("watches")
                .observe(&e.embedding, Instant::now());
            for (watch, score) in fired {
                let hit = HitView {
                    id: seq,
                    score,
                    ts_ms,
                    source: source_id.into(),
                    label: label.clone(),
                };
                log::info!("watch {watch} matched frame {seq} ({label}) at {score:.3}");
                s.push_match(watch, &hit);
            }
            order.last = Some(e.embedding);
        }
        Err(e) => {
            log::error!("index append failed: {e}");
            s.counters.store_errors.fetch_add(1, Relaxed);
        }
    }
}
