//! The daemon's wiring: shared state, the ingest threads, the transports and what each
//! request does. Everything is bounded: clients ([`MAX_CLIENTS`]), queries encoding at once
//! ([`QUERY_SLOTS`]), per-client output queue ([`OUTBOX`]), line length, k, watches.
//!
//! SIGTERM and SIGINT stop it cleanly ([`signals`]: the batch in flight is stored, the
//! socket removed, exit 0); SIGKILL or power loss at any moment leaves an index that the
//! next start recovers (`src/index/FORMAT.md`), and a stale socket file is replaced on start.

pub mod cli;
pub mod clients;
pub mod config;
#[cfg(feature = "fleet")]
pub mod fleet;
pub mod ingest;
#[cfg(feature = "mqtt")]
pub mod mqtt;
pub mod reload;
pub mod signals;
pub mod transport;
pub mod watch;

use crate::encoder::Encoder;
use crate::index::search::{Filter, Mode, RegionQuery};
use crate::index::tags::{FrameCopy, TagStore};
use crate::index::Index;
use crate::protocol::{self, Command, Form, HitView, Request, Response, StatusView};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

pub use clients::MAX_CLIENTS;
pub const QUERY_SLOTS: usize = 2;
pub const OUTBOX: usize = 64;

/// What the daemon counts, each named after the one thing it counts (all in `status`).
#[derive(Default)]
pub struct Counters {
    /// frames stored in the index
    pub ingested: AtomicU64,
    /// live frames that found the queue full
    pub dropped: AtomicU64,
    /// frames skipped by the pixel or the embedding gate
    pub gated: AtomicU64,
    /// failed reads from the frame source (camera gone, undecodable frame)
    pub source_errors: AtomicU64,
    /// frames the image tower failed on
    pub encode_errors: AtomicU64,
    /// frames the index failed to store (full disk, failed flush)
    pub store_errors: AtomicU64,
    /// `+MATCH` pushes lost to a client whose outbox was full
    pub pushes_lost: AtomicU64,
    /// MQTT messages dropped because the broker's queue was full (broker away or slow)
    pub mqtt_dropped: AtomicU64,
    /// entries the board pushed to the fleet database (`--fleet-db`)
    pub fleet_sent: AtomicU64,
    /// push rounds that failed (database away, refused, wrong password)
    pub fleet_failures: AtomicU64,
}

/// A counting semaphore for the query slots. The slot comes back when the work ends however
/// it ends: a panicking handler (caught by its client thread) must not leak one, or two such
/// panics would hang every search.
struct Slots {
    free: Mutex<usize>,
    cv: Condvar,
}

impl Slots {
    fn new(n: usize) -> Slots {
        Slots {
            free: Mutex::new(n),
            cv: Condvar::new(),
        }
    }

    fn run<T>(&self, f: impl FnOnce() -> T) -> T {
        struct Held<'a>(&'a Slots);
        impl Drop for Held<'_> {
            fn drop(&mut self) {
                *self.0.free.lock().unwrap_or_else(|p| p.into_inner()) += 1;
                self.0.cv.notify_one();
            }
        }
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        while *free == 0 {
            free = self.cv.wait(free).unwrap_or_else(|p| p.into_inner());
        }
        *free -= 1;
        drop(free);
        let _held = Held(self);
        f()
    }
}

/// A connected client that receives `+MATCH` pushes.
struct Subscriber {
    id: u64,
    json: Arc<AtomicBool>,
    outbox: SyncSender<String>,
}

/// What the daemon's threads share. Its fields are the daemon's own; tests and tools see
/// it through [`Shared::answer`], [`Shared::status`] and the accessors below.
pub struct Shared {
    /// The model. A search holds it (read) from encoding its query to the end of its scan,
    /// the ingest thread from encoding a batch to storing it; a reload takes it (write) for
    /// its commit, so no answer ever mixes two bundles' spaces ([`reload`]).
    pub(crate) encoder: std::sync::RwLock<Arc<Encoder>>,
    pub(crate) reload: Mutex<reload::State>,
    pub(crate) index: Index,
    pub(crate) source_id: String,
    pub(crate) counters: Counters,
    pub(crate) source_done: AtomicBool,
    pub(crate) watches: Mutex<watch::Watches>,
    /// The operator's tags (`tags.ml` beside the index); the error if it could not be opened
    /// (tag requests then answer with it, everything else works).
    pub(crate) tags: Mutex<std::result::Result<TagStore, String>>,
    /// Held by the ingest thread while it encodes and stores one batch; a clean shutdown
    /// takes it to wait for the batch in flight ([`signals`]).
    pub(crate) ingest_turn: Mutex<()>,
    pub(crate) started: Instant,
    pub(crate) clients: Arc<clients::Clients>,
    subscribers: Mutex<Vec<Subscriber>>,
    next_subscriber: AtomicU64,
    /// The MQTT publisher, when `--mqtt` names a broker.
    #[cfg(feature = "mqtt")]
    pub(crate) mqtt: std::sync::OnceLock<mqtt::Publisher>,
    slots: Slots,
    /// How frames' regions are kept and searched (used when the model has a region tower).
    pub(crate) regions: RegionPolicy,
}

/// How the daemon uses region embeddings (models/README.md, "Region scoring"): the regions a
/// frame keeps (the most confident first) and the weight of the best match in a search.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RegionPolicy {
    pub keep: usize,
    pub weight: f32,
}

impl RegionPolicy {
    /// Measured on validation: never more than one query below the global score alone on any
    /// set, more found on cluttered frames (models/README.md).
    pub const DEFAULT: RegionPolicy = RegionPolicy {
        keep: 16,
        weight: 0.1,
    };
}

impl Shared {
    pub fn new(
        encoder: Encoder,
        index: Index,
        source_id: &str,
        watch_cooldown: std::time::Duration,
    ) -> Shared {
        let tags = TagStore::open(index.dir()).map_err(|e| {
            log::error!("tags unavailable: {e}");
            format!("tags unavailable: {e}")
        });
        Shared {
            encoder: std::sync::RwLock::new(Arc::new(encoder)),
            reload: Mutex::new(reload::State::default()),
            index,
            source_id: crate::index::slot::fit(source_id, crate::index::SOURCE_MAX).to_string(),
            counters: Counters::default(),
            source_done: AtomicBool::new(false),
            watches: Mutex::new(watch::Watches::new(watch_cooldown)),
            tags: Mutex::new(tags),
            ingest_turn: Mutex::new(()),
            started: Instant::now(),
            clients: Arc::default(),
            subscribers: Mutex::new(Vec::new()),
            next_subscriber: AtomicU64::new(1),
            #[cfg(feature = "mqtt")]
            mqtt: std::sync::OnceLock::new(),
            slots: Slots::new(QUERY_SLOTS),
            regions: RegionPolicy::DEFAULT,
        }
    }

    /// The same, with `policy` for regions (the default: [`RegionPolicy::DEFAULT`]).
    pub fn with_regions(mut self, policy: RegionPolicy) -> Shared {
        self.regions = policy;
        self
    }

    /// What a search adds for regions: None when the model has no region tower, the weight
    /// is 0, or the query embedding has no part in the regions' space.
    pub(crate) fn region_query(&self, model: &Encoder, q: &[f32]) -> Option<RegionQuery> {
        let tower = model.region_tower()?;
        if self.regions.weight == 0.0 {
            return None;
        }
        let part = crate::encoder::regions::query_part(model.bundle(), q, tower.width)?;
        Some(RegionQuery {
            part,
            lambda: self.regions.weight,
        })
    }

    /// The model answering now (a reload swaps it).
    pub fn encoder(&self) -> Arc<Encoder> {
        self.model().clone()
    }

    pub(crate) fn model(&self) -> std::sync::RwLockReadGuard<'_, Arc<Encoder>> {
        self.encoder.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The index frames are stored in.
    pub fn index(&self) -> &Index {
        &self.index
    }

    /// Whether the frame source has ended (a replay played through; never for a camera).
    pub fn source_done(&self) -> bool {
        self.source_done.load(Relaxed)
    }

    /// Run `f` while holding one of the [`QUERY_SLOTS`] (text encoding is CPU-bound: more
    /// at once only makes every client slower). Every encode and every scan runs in one.
    pub fn with_query_slot<T>(&self, f: impl FnOnce() -> T) -> T {
        self.slots.run(f)
    }

    /// Publishes watch matches and status to an MQTT broker from now on ([`mqtt`]); a second
    /// call is refused.
    #[cfg(feature = "mqtt")]
    pub fn start_mqtt(self: &Arc<Self>, target: &mqtt::Target) -> crate::Result<()> {
        let p = mqtt::Publisher::start(target, self)?;
        self.mqtt
            .set(p)
            .map_err(|_| crate::Error::new("an MQTT publisher is running already"))
    }

    pub fn subscribe(&self, json: Arc<AtomicBool>, outbox: SyncSender<String>) -> u64 {
        let id = self.next_subscriber.fetch_add(1, Relaxed);
        self.subscribers
            .lock()
            .expect("subscribers")
            .push(Subscriber { id, json, outbox });
        id
    }

    pub fn unsubscribe(&self, id: u64) {
        self.subscribers
            .lock()
            .expect("subscribers")
            .retain(|s| s.id != id);
    }

    /// Push a `+MATCH` to every client; a client whose outbox is full loses the push (counted).
    pub fn push_match(&self, watch: u32, hit: &HitView) {
        for s in self.subscribers.lock().expect("subscribers").iter() {
            let style = if s.json.load(Relaxed) {
                protocol::Style::Json
            } else {
                protocol::Style::Human
            };
            let line = protocol::render_match(style, watch, hit);
            if s.outbox.try_send(line).is_err() {
                self.counters.pushes_lost.fetch_add(1, Relaxed);
            }
        }
        #[cfg(feature = "mqtt")]
        if let Some(p) = self.mqtt.get() {
            let text = self
                .watches
                .lock()
                .expect("watches")
                .list
                .iter()
                .find(|w| w.n == watch)
                .map(|w| w.text.clone())
                .unwrap_or_default();
            if !p.publish_match(watch, &text, hit) {
                self.counters.mqtt_dropped.fetch_add(1, Relaxed);
            }
        }
    }

    fn hits(&self, hits: Vec<crate::index::search::Hit>) -> Vec<HitView> {
        hits.into_iter()
            .filter_map(|h| {
                self.index.get(h.seq).map(|e| HitView {
                    id: h.seq,
                    score: h.score,
                    ts_ms: e.ts_ms,
                    source: e.source,
                    label: e.label,
                })
            })
            .collect()
    }

    pub fn status(&self) -> StatusView {
        StatusView {
            frames: self.index.len(),
            capacity: self.index.header().capacity,
            ingested: self.counters.ingested.load(Relaxed),
            dropped: self.counters.dropped.load(Relaxed),
            gated: self.counters.gated.load(Relaxed),
            source_errors: self.counters.source_errors.load(Relaxed),
            encode_errors: self.counters.encode_errors.load(Relaxed),
            store_errors: self.counters.store_errors.load(Relaxed),
            pushes_lost: self.counters.pushes_lost.load(Relaxed),
            mqtt_dropped: self.counters.mqtt_dropped.load(Relaxed),
            fleet_sent: self.counters.fleet_sent.load(Relaxed),
            fleet_failures: self.counters.fleet_failures.load(Relaxed),
            source_done: self.source_done.load(Relaxed),
            model: self.model().bundle().manifest.name.clone(),
            uptime_s: self.started.elapsed().as_secs(),
            watches: self.watches.lock().expect("watches").list.len(),
            reload: self.reload.lock().expect("reload").to_string(),
        }
    }

    /// Watches live in memory; the file beside the index is their copy for the next start.
    /// A failed write is logged: the watch works until the restart.
    fn save_watches(&self, watches: &watch::Watches) {
        if let Err(e) = watches.save(self.index.dir()) {
            log::warn!("watches not saved, they will not survive a restart: {e}");
        }
    }

    /// What one request does.
    pub fn handle(self: &Arc<Self>, req: &Request) -> Response {
        let t0 = Instant::now();
        match &req.cmd {
            Command::Search {
                text,
                k,
                since,
                until,
                source,
                exact,
                regions,
            } => {
                let now = crate::source::now_ms();
                let mode = match exact {
                    None => Mode::Auto,
                    Some(true) => Mode::Exact,
                    Some(false) => Mode::TwoStage,
                };
                let filter = Filter {
                    since_ms: since.map(|w| w.to_ms(now)),
                    until_ms: until.map(|w| w.to_ms(now)),
                    source: source.clone(),
                };
                // encoding and the scan in one query slot: scans are bounded like encodes
                let found = self.with_query_slot(|| {
                    let model = self.model();
                    let q = model.embed_text(text)?;
                    let rq = match regions {
                        Some(false) => None,
                        _ => self.region_query(&model, &q),
                    };
                    Ok::<_, crate::Error>(self.index.search_with(
                        &q,
                        *k,
                        &filter,
                        mode,
                        rq.as_ref(),
                    ))
                });
                let hits = match found {
                    Ok(h) => self.hits(h),
                    Err(e) => return Response::Error(format!("cannot encode the query: {e}")),
                };
                Response::Hits {
                    hits,
                    ms: t0.elapsed().as_secs_f64() * 1e3,
                }
            }
            Command::Similar { id, k } => {
                // the frame itself would be its own best hit: ask for one more, drop it;
                // read and scanned under one model (a reload commits between queries)
                let scan = || {
                    let _model = self.model();
                    let q = self.index.get(*id)?.dequantized();
                    Some(self.index.search(&q, *k + 1, &Filter::default()))
                };
                let Some(mut found) = self.with_query_slot(scan) else {
                    return Response::Error(format!("no frame {id} (it may have left the ring)"));
                };
                found.retain(|h| h.seq != *id);
                found.truncate(*k);
                Response::Hits {
                    hits: self.hits(found),
                    ms: t0.elapsed().as_secs_f64() * 1e3,
                }
            }
            Command::Thumb { id } => match self.index.get_with_thumb(*id) {
                Some((_, Some(jpeg))) => Response::Thumb { id: *id, jpeg },
                Some((_, None)) => Response::Error(format!("frame {id} has no valid thumbnail")),
                None => Response::Error(format!("no frame {id} (it may have left the ring)")),
            },
            Command::Status => Response::Status(self.status()),
            Command::Help => Response::Help,
            Command::WatchAdd { text } => {
                let model = self.model();
                match self.with_query_slot(|| model.embed_text(text)) {
                    Err(e) => Response::Error(format!("cannot encode the watch: {e}")),
                    Ok(emb) => {
                        let mut watches = self.watches.lock().expect("watches");
                        match watches.add(text.clone(), emb) {
                            Ok(n) => {
                                self.save_watches(&watches);
                                Response::WatchAdded { n }
                            }
                            Err(e) => Response::Error(e),
                        }
                    }
                }
            }
            Command::WatchList => Response::Watches(
                self.watches
                    .lock()
                    .expect("watches")
                    .list
                    .iter()
                    .map(|w| (w.n, w.text.clone()))
                    .collect(),
            ),
            Command::Tag { id, text } => {
                let mut store = self.tags.lock().expect("tags");
                let store = match store.as_mut() {
                    Ok(s) => s,
                    Err(e) => return Response::Error(e.clone()),
                };
                // the first tag copies the frame out of the ring: it outlives its slot
                let copy = || {
                    let (entry, thumb) = self.index.get_with_thumb(*id)?;
                    Some(FrameCopy {
                        kept: self.index.kept(*id),
                        entry,
                        thumb: thumb.unwrap_or_default(),
                    })
                };
                match store.tag(*id, text, copy) {
                    Ok(tags) => Response::Tags(tags.into_iter().map(|t| (*id, t)).collect()),
                    Err(e) => Response::Error(e),
                }
            }
            Command::Untag { id, text } => {
                let mut store = self.tags.lock().expect("tags");
                match store
                    .as_mut()
                    .map_err(|e| e.clone())
                    .and_then(|s| s.untag(*id, text.as_deref()))
                {
                    Ok(tags) => Response::Tags(tags.into_iter().map(|t| (*id, t)).collect()),
                    Err(e) => Response::Error(e),
                }
            }
            Command::Tags { id } => {
                let store = self.tags.lock().expect("tags");
                let store = match store.as_ref() {
                    Ok(s) => s,
                    Err(e) => return Response::Error(e.clone()),
                };
                let pairs = store
                    .frames()
                    .filter(|f| id.is_none_or(|id| f.entry.seq == id))
                    .flat_map(|f| f.tags.iter().map(|t| (f.entry.seq, t.clone())))
                    .collect();
                Response::Tags(pairs)
            }
            Command::Reload {
                bundle,
                from_thumbnails,
            } => match reload::start(self, bundle.into(), *from_thumbnails) {
                Ok(()) => Response::Done,
                Err(e) => Response::Error(e),
            },
            Command::WatchDel { n } => {
                let mut watches = self.watches.lock().expect("watches");
                if watches.remove(*n) {
                    self.save_watches(&watches);
                    Response::Done
                } else {
                    Response::Error(format!("no watch {n}"))
                }
            }
        }
    }

    /// Parse and answer one line: the reply bytes, and whether the line was JSON.
    pub fn answer(self: &Arc<Self>, line: &[u8]) -> (String, bool) {
        match protocol::parse(line) {
            Ok(req) => {
                let json = matches!(req.form, Form::Json { .. });
                (protocol::render(&req.form, &self.handle(&req)), json)
            }
            Err(e) => {
                let json = matches!(e.form, Form::Json { .. });
                (protocol::render(&e.form, &Response::Error(e.reason)), json)
            }
        }
    }
}

/// Start everything `cfg` asks for; returns the shared state (the caller keeps the process
/// alive, e.g. by serving the console or joining the socket thread).
pub fn start(cfg: &config::Config) -> crate::Result<(Arc<Shared>, std::thread::JoinHandle<()>)> {
    use crate::error::Context;
    // a broker named wrong is refused before anything is loaded or created
    #[cfg(feature = "mqtt")]
    let mqtt_target = match &cfg.mqtt {
        Some(url) => Some(mqtt::Target::parse(
            url,
            cfg.mqtt_topic.as_deref().unwrap_or("moonlens"),
        )?),
        None => None,
    };
    #[cfg(not(feature = "mqtt"))]
    if let Some(url) = &cfg.mqtt {
        crate::bail!(
            "--mqtt {url}: this moonlensd was built without MQTT (cargo feature `mqtt`; \
             board/README.md says how to build it in)"
        );
    }
    #[cfg(feature = "fleet")]
    let fleet_settings = match &cfg.fleet_db {
        Some(url) => {
            let s = fleet::Settings {
                url: url.clone(),
                board: match &cfg.fleet_board {
                    Some(b) => b.clone(),
                    None => fleet::host_name(),
                },
                every: std::time::Duration::from_secs(cfg.fleet_every_s.unwrap_or(10)),
                thumbs: cfg.fleet_thumbs.unwrap_or(false),
            };
            s.check()?;
            Some(s)
        }
        None => None,
    };
    #[cfg(not(feature = "fleet"))]
    if cfg.fleet_db.is_some() {
        crate::bail!(
            "--fleet-db: this moonlensd was built without the fleet push (cargo feature `fleet`; \
             board/README.md says how to build it in)"
        );
    }
    // before any thread starts, so that only the signal thread ever takes them
    signals::block();
    // The socket first: a second daemon started by mistake stops here, before it touches the
    // index (which its writer lock also refuses).
    let listener = transport::bind(&cfg.socket())?;
    // after a reload the index may belong to a bundle the config does not name yet
    let bundle = crate::bundle::Bundle::open(reload::bundle_to_start(&cfg.bundle(), &cfg.index()))?;
    let policy = RegionPolicy {
        keep: cfg.regions.unwrap_or(RegionPolicy::DEFAULT.keep as u32) as usize,
        weight: cfg.region_weight.unwrap_or(RegionPolicy::DEFAULT.weight),
    };
    if policy.keep > crate::index::regions::COUNT_MAX as usize
        || !(0.0..=1.0).contains(&policy.weight)
    {
        crate::bail!(
            "regions = {} and region_weight = {}: the count must be 0 to {} and the weight 0 to 1",
            policy.keep,
            policy.weight,
            crate::index::regions::COUNT_MAX
        );
    }
    let encoder = load_encoder(&bundle, policy.keep > 0)?;
    log::info!(
        "bundle {} loaded in {} ms",
        bundle.manifest.name,
        encoder.load_time.as_millis()
    );
    if let Some(done) = reload::adopt_at_start(&cfg.index(), &bundle, &encoder)? {
        log::warn!(
            "index adopted by {}: {}",
            bundle.dir.display(),
            reload::State::Done(done)
        );
    }
    let expect = crate::index::Expect {
        dim: encoder.dim(),
        bundle_id: bundle.id,
        layout: *encoder.layout(),
        regions: region_layout(&encoder, policy.keep),
    };
    let index = Index::open_or_create_with(&cfg.index(), cfg.capacity.unwrap_or(10_000), &expect)?;
    log::info!(
        "index {}: {} entries of {}",
        cfg.index().display(),
        index.len(),
        index.header().capacity
    );
    let spec = cfg.source();
    let live = spec.starts_with("v4l:");
    let opts = crate::source::SourceOptions {
        fps: cfg.fps.unwrap_or(if live { 2.0 } else { 20.0 }),
        width: cfg.width.unwrap_or(640),
        height: cfg.height.unwrap_or(480),
        looping: cfg.looping.unwrap_or(false),
    };
    let source = crate::source::open(&spec, &opts)?;
    let defaults = if live {
        ingest::Gates::CAMERA
    } else {
        ingest::Gates::OFF
    };
    let gates = ingest::Gates {
        pixel_diff: cfg.gate_pixels.unwrap_or(defaults.pixel_diff),
        embedding_cos: cfg.gate_embedding.unwrap_or(defaults.embedding_cos),
    };
    let cooldown = std::time::Duration::from_secs(cfg.watch_cooldown_s.unwrap_or(60));
    let shared = Arc::new(Shared::new(encoder, index, source.id(), cooldown).with_regions(policy));
    let restored = shared
        .watches
        .lock()
        .expect("watches")
        .restore(shared.index.dir(), |t| shared.model().embed_text(t));
    if restored > 0 {
        log::info!("{restored} watch(es) restored from {}", watch::FILE);
    }
    #[cfg(feature = "mqtt")]
    if let Some(target) = &mqtt_target {
        shared.start_mqtt(target)?;
        log::info!(
            "mqtt: publishing to mqtt://{}:{} under {}/",
            target.host,
            target.port,
            target.topic
        );
    }
    #[cfg(feature = "fleet")]
    if let Some(s) = fleet_settings {
        log::info!(
            "fleet: pushing entries as board {} every {} s",
            s.board,
            s.every.as_secs()
        );
        fleet::start(&shared, s)?;
    }
    log::info!("source {spec}; socket {}", cfg.socket().display());
    signals::stop_on_signal(shared.clone(), cfg.socket(), cfg.file.clone());
    ingest::start(
        shared.clone(),
        source,
        gates,
        ingest::workers(cfg.workers.map(usize::from)),
    );
    // the two-stage search's codes, off the answer path: a large ring answers exactly at
    // once and in two stages seconds later
    let s = shared.clone();
    std::thread::Builder::new()
        .name("codes".into())
        .spawn(move || s.index.learn_codes())
        .context("spawn codes")?;
    if let Some(dev) = &cfg.serial {
        let (s, d, b) = (shared.clone(), dev.clone(), cfg.baud.unwrap_or(115_200));
        std::thread::Builder::new()
            .name("serial".into())
            .spawn(move || transport::serve_serial(s, d, b))
            .context("spawn serial")?;
    }
    let s = shared.clone();
    let sock = std::thread::Builder::new()
        .name("socket".into())
        .spawn(move || transport::serve_socket(s, listener))
        .context("spawn socket")?;
    Ok((shared, sock))
}

/// The bundle's towers, with the region tower when `regions` and the bundle has one (a
/// bundle without a pooled feature map, such as a CLIP model, runs without: logged).
pub fn load_encoder(bundle: &crate::bundle::Bundle, regions: bool) -> crate::Result<Encoder> {
    if regions {
        match Encoder::load_with_regions(bundle) {
            Ok(e) => return Ok(e),
            Err(e) => log::info!("no region embeddings with this bundle: {e}"),
        }
    }
    Encoder::load(bundle)
}

/// What the index keeps of each frame's regions with `encoder`: `keep` of its region
/// tower's embeddings in its base bundle's space, or none.
pub fn region_layout(encoder: &Encoder, keep: usize) -> crate::index::RegionLayout {
    match encoder.region_tower() {
        Some(t) if keep > 0 => crate::index::RegionLayout {
            count: keep.min(t.cells) as u32,
            width: t.width as u32,
            space_id: encoder.bundle().backbone_id(),
        },
        _ => crate::index::RegionLayout::NONE,
    }
}

#[cfg(test)]
mod tests {
    use super::Slots;

    /// Issue 14, fault 8: a panic while holding a query slot leaked it; two such panics hung
    /// every later search.
    #[test]
    fn a_panicking_query_gives_its_slot_back() {
        let slots = Slots::new(2);
        for _ in 0..3 {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                slots.run(|| panic!("handler bug"))
            }));
            assert!(r.is_err());
        }
        assert_eq!(slots.run(|| 7), 7);
        assert_eq!(*slots.free.lock().unwrap(), 2);
    }
}
