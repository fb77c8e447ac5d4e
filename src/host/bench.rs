//! `moonlens-host bench`: measured figures, each against a baseline from the same run.

use crate::encoder::Encoder;
use crate::error::Result;
use crate::index::search::{top_k, Filter};
use crate::index::{quantize, slot, Entry, Header, THUMB_SLOT};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Text queries of the search benchmarks (what the samples show).
pub(crate) const PHRASES: [&str; 12] = [
    "a rabbit",
    "a banana",
    "a bee on a flower",
    "a duck",
    "an elephant",
    "a giraffe",
    "a slice of pizza",
    "a red strawberry",
    "a hedgehog",
    "a pink flamingo",
    "a pear",
    "an animal in the grass",
];

/// The memory-bandwidth baseline: every byte read once, summed as u64 words in four
/// independent lanes (vectorized), the least work a scan of the same bytes can do.
fn sum_bytes(b: &[u8]) -> u64 {
    let (words, _) = b.as_chunks::<32>();
    let mut acc = [0u64; 4];
    for w in words {
        for (j, a) in acc.iter_mut().enumerate() {
            *a = a.wrapping_add(u64::from_ne_bytes(
                w[8 * j..8 * j + 8].try_into().expect("8"),
            ));
        }
    }
    acc.iter().fold(0, |x, y| x.wrapping_add(*y))
}

/// Real embeddings for the search benchmark: the images of `dir` and five camera-like views
/// of each (a crop of 70-95% at a corner or the centre, mirrored, lighter or darker), through
/// the bundle's image tower.
pub(crate) fn real_embeddings(enc: &Encoder, dir: &std::path::Path) -> Result<Vec<Vec<f32>>> {
    use crate::error::Context;
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .context(format_args!(
            "cannot read {} (pass --images DIR)",
            dir.display()
        ))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "png" || e == "jpg"))
        .collect();
    files.sort();
    let mut images = Vec::new();
    for f in &files {
        let img = super::eval::load_image(f)?;
        let (w, h) = (img.width(), img.height());
        images.push(img.clone());
        for v in 0..5u32 {
            let s = 0.70 + 0.05 * v as f64;
            let (cw, ch) = ((w as f64 * s) as u32, (h as f64 * s) as u32);
            let (x, y) = match v % 3 {
                0 => (0, 0),
                1 => (w - cw, h - ch),
                _ => ((w - cw) / 2, (h - ch) / 2),
            };
            let mut view = img.crop_imm(x, y, cw.max(1), ch.max(1));
            if v % 2 == 1 {
                view = view.fliph();
            }
            images.push(view.brighten(v as i32 * 12 - 24));
        }
    }
    if images.is_empty() {
        crate::bail!("no .png/.jpg images in {}", dir.display());
    }
    enc.embed_images(&images)
}

/// A ring of `entries` slots in memory, entry i a noisy copy of `base[i % base.len()]`
/// (a Gaussian-ish draw, the sum of 4 uniforms, scaled to a noise of norm ~0.25: near-
/// duplicate frames, cosine ~0.97), one every 100 ms from 2026-09-21, of three cameras; what
/// the search benchmarks scan (`bench search`, `bench fleet`).
pub(crate) fn near_duplicate_ring(
    base: &[Vec<f32>],
    entries: usize,
    bundle_id: [u8; 32],
) -> (Header, Vec<u8>) {
    let dim = base[0].len();
    let header = Header {
        version: crate::index::VERSION,
        dim: dim as u32,
        capacity: entries as u64,
        slot_size: slot::size(dim) as u32,
        thumb_slot: THUMB_SLOT as u32,
        bundle_id,
        created_ms: RING_START_MS,
    };
    let ss = slot::size(dim);
    let mut slots = vec![0u8; entries * ss];
    let mut rng = crate::host::train::linalg::Rng::new(5);
    let sigma = 0.25 / (dim as f64).sqrt();
    for (i, s) in slots.chunks_exact_mut(ss).enumerate() {
        let b = &base[i % base.len()];
        let noisy: Vec<f32> = b
            .iter()
            .map(|x| {
                let g: f64 = (0..4).map(|_| rng.uniform() - 0.5).sum::<f64>() * 3f64.sqrt();
                x + (g * sigma) as f32
            })
            .collect();
        let n = noisy.iter().map(|x| x * x).sum::<f32>().sqrt();
        let unit: Vec<f32> = noisy.iter().map(|x| x / n).collect();
        let (q, scale) = quantize(&unit);
        let e = Entry {
            seq: i as u64 + 1,
            ts_ms: RING_START_MS + i as i64 * 100,
            source: ["cam-a", "cam-b", "cam-c"][i % 3].into(),
            label: "bench".into(),
            scale,
            embedding: q,
        };
        slot::encode(&e, 0, 0, s);
    }
    (header, slots)
}

/// When [`near_duplicate_ring`]'s entries start (Unix ms).
const RING_START_MS: i64 = 1_790_000_000_000;

/// Single-thread search over `entries` slots in memory, exact and in two stages, against a
/// plain sum over a buffer of the same size (the memory-bandwidth baseline). The entries are
/// near-duplicate camera frames: real image embeddings ([`real_embeddings`]), each copied
/// many times with a little noise (cosine ~0.97 to its original); the queries are real text
/// embeddings. `recall_at_10` is the share of the exact top 10 that the two stages return.
pub fn search(
    enc: &Encoder,
    images: &std::path::Path,
    entries: usize,
    queries: usize,
    exact_only: bool,
    candidates: usize,
    json: bool,
) -> Result<()> {
    use crate::index::codes::Codes;
    use crate::index::search::top_k_two_stage;
    let dim = enc.dim();
    let base = real_embeddings(enc, images)?;
    let (header, slots) = near_duplicate_ring(&base, entries, [0; 32]);
    let t = Instant::now();
    let codes = Codes::build(&slots, &header);
    let codes_ms = t.elapsed().as_secs_f64() * 1e3;
    let qs: Vec<Vec<f32>> = (0..queries.max(3))
        .map(|i| enc.embed_text(PHRASES[i % PHRASES.len()]))
        .collect::<Result<_>>()?;
    // Exact, two stages and baseline alternate, so all see the same machine state.
    let (mut lat, mut approx, mut base_ms, mut recall) = (vec![], vec![], vec![], vec![]);
    for (i, q) in qs.iter().enumerate() {
        let t = Instant::now();
        let exact = std::hint::black_box(top_k(&slots, &header, q, 10, &Filter::default()));
        let ms = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        std::hint::black_box(sum_bytes(&slots));
        let b = t.elapsed().as_secs_f64() * 1e3;
        let (mut a_ms, mut r) = (None, None);
        if !exact_only {
            let t = Instant::now();
            let two = std::hint::black_box(top_k_two_stage(
                &slots,
                &header,
                &codes,
                q,
                10,
                &Filter::default(),
                candidates,
            ));
            a_ms = Some(t.elapsed().as_secs_f64() * 1e3);
            let found = exact
                .iter()
                .filter(|h| two.iter().any(|t| t.seq == h.seq))
                .count();
            r = Some(found as f64 / exact.len().max(1) as f64);
        }
        if i >= 2 {
            // the first two rounds warm the caches and the page tables
            lat.push(ms);
            base_ms.push(b);
            approx.extend(a_ms);
            recall.extend(r);
        }
    }
    lat.sort_by(f64::total_cmp);
    base_ms.sort_by(f64::total_cmp);
    approx.sort_by(f64::total_cmp);
    let (p50, p99) = (percentile(&lat, 0.5), percentile(&lat, 0.99));
    let gb = slots.len() as f64 / 1e9;
    let scan_gbps = gb / (p50 / 1e3);
    let baseline_gbps = gb / (percentile(&base_ms, 0.5) / 1e3);
    let ratio = scan_gbps / baseline_gbps;
    let mut out = serde_json::json!({"entries": entries, "dim": dim, "real_embeddings": base.len(),
        "p50_ms": p50, "p99_ms": p99, "scan_gbps": scan_gbps, "baseline_gbps": baseline_gbps,
        "ratio": ratio});
    if !exact_only {
        let (a50, a99) = (percentile(&approx, 0.5), percentile(&approx, 0.99));
        let rec = recall.iter().sum::<f64>() / recall.len().max(1) as f64;
        out["approx_p50_ms"] = a50.into();
        out["approx_p99_ms"] = a99.into();
        out["recall_at_10"] = rec.into();
        out["candidates"] = candidates.into();
        out["codes_mb"] = (entries as f64 * (crate::index::codes::K + 4) as f64 / 1e6).into();
        out["codes_build_ms"] = codes_ms.into();
        if !json {
            eprintln!("two stages: p50 {a50:.2} ms, p99 {a99:.2} ms ({:.1}x faster than exact), recall@10 {rec:.4} ({candidates} candidates; codes built in {codes_ms:.0} ms)", p50 / a50);
        }
    }
    if !json {
        eprintln!("{entries} entries x {dim}: exact p50 {p50:.2} ms, p99 {p99:.2} ms, scan {scan_gbps:.2} GB/s, baseline sum {baseline_gbps:.2} GB/s, ratio {ratio:.2}");
    }
    println!("{out}");
    Ok(())
}

/// Per tower: median latency over `runs` runs after warm-up, on one thread and on all cores
/// (tract's rayon executor), and load time.
/// The median wall time of `runs` calls of `f`, in ms, after 3 warm-up calls.
fn median_ms(runs: usize, f: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..3 {
        f()?;
    }
    let mut v = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        f()?;
        v.push(t.elapsed().as_secs_f64() * 1e3);
    }
    v.sort_by(f64::total_cmp);
    Ok(percentile(&v, 0.5))
}

pub fn encode(enc: &Encoder, runs: usize, json: bool) -> Result<()> {
    use tract_linalg::multithread::{multithread_tract_scope, Executor};
    let runs = runs.max(5);
    let img = image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(640, 480, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x * y) % 256) as u8])
    }));
    let time = |f: &mut dyn FnMut() -> Result<()>| median_ms(runs, f);
    let pre = time(&mut || {
        std::hint::black_box(enc.preprocess(&img));
        Ok(())
    })?;
    let query = "a rabbit next to the full moon";
    let image_ms = time(&mut || enc.embed_image(&img).map(|_| ()))?;
    let text_ms = time(&mut || enc.embed_text(query).map(|_| ()))?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (image_all, text_all) = multithread_tract_scope(Executor::multithread(cores), || {
        Ok::<_, crate::Error>((
            time(&mut || enc.embed_image(&img).map(|_| ()))?,
            time(&mut || enc.embed_text(query).map(|_| ()))?,
        ))
    })?;
    // the same query in Chinese goes to the multilingual tower, where the bundle has one
    let multilingual_ms = match enc.multilingual() {
        Some(m) => Some(time(&mut || m.embed("满月旁边的兔子").map(|_| ()))?),
        None => None,
    };
    let load_ms = enc.load_time.as_secs_f64() * 1e3;
    let (rss_mb, peak_mb) = (proc_status_mb("VmRSS:"), proc_status_mb("VmHWM:"));
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    let parts = &enc.load_parts;
    let first_answer_ms = first_answer(&enc.bundle().dir)?;
    if !json {
        eprintln!("first answer {first_answer_ms:.0} ms after the daemon starts (median of 3)");
        eprintln!("bundle {}: load {load_ms:.0} ms (all towers); one thread: image {image_ms:.1} ms (of which preprocessing {pre:.1} ms), text {text_ms:.1} ms{}; {cores} cores: image {image_all:.1} ms, text {text_all:.1} ms", enc.bundle().manifest.name,
            multilingual_ms.map_or(String::new(), |m| format!(", multilingual text {m:.1} ms")));
    }
    let mut out = serde_json::json!({"bundle": enc.bundle().manifest.name, "threads": 1,
        "image": {"median_ms": image_ms, "preprocess_ms": pre, "load_ms": load_ms},
        "text": {"median_ms": text_ms, "load_ms": load_ms},
        "all_cores": {"threads": cores, "image": {"median_ms": image_all},
                      "text": {"median_ms": text_all}},
        "memory": {"rss_mb": rss_mb, "peak_rss_mb": peak_mb},
        "load_parts_ms": {"image": ms(parts.image), "text": ms(parts.text),
                          "multilingual": parts.multilingual.map(ms)},
        "first_answer_ms": first_answer_ms});
    if let Some(m) = multilingual_ms {
        out["text_multilingual"] = serde_json::json!({"median_ms": m, "load_ms": load_ms});
    }
    println!("{out}");
    Ok(())
}

/// What region embeddings cost a frame: the image tower with the feature map and the bridge
/// over its cells against the plain tower (the same bundle, loaded both ways), the bytes of
/// K int8 regions against an index slot and its thumbnail, and the time to score a
/// candidate's regions against its one global cosine.
pub fn regions(bundle: &crate::bundle::Bundle, runs: usize, json: bool) -> Result<()> {
    use crate::encoder::regions::{best_match, most_confident};
    let runs = runs.max(5);
    let plain = Encoder::load(bundle)?;
    let with = Encoder::load_with_regions(bundle)?;
    let img = image::open("models/samples/pizza.png")
        .unwrap_or_else(|_| image::DynamicImage::new_rgb8(640, 480));
    let time = |f: &mut dyn FnMut() -> Result<()>| median_ms(runs, f);
    let plain_ms = time(&mut || plain.embed_image(&img).map(|_| ()))?;
    let regions_ms = time(&mut || with.encode_regions(&img).map(|_| ()))?;
    let (g, _, cells) = with.encode_regions(&img)?;
    let width = with.region_tower().map_or(0, |t| t.width);
    let query: Vec<f32> = g[..width].to_vec();
    // scoring: a candidate's one global cosine against the best of its K regions
    let candidates = 1000;
    let globals = vec![g.clone(); candidates];
    let global_us = time(&mut || {
        let s: f32 = globals.iter().map(|e| crate::encoder::cosine(&g, e)).sum();
        std::hint::black_box(s);
        Ok(())
    })? * 1e3
        / candidates as f64;
    let slot = 752.0 + 16_384.0;
    let mut per_k = Vec::new();
    for k in [8usize, 16, 49] {
        let kept = vec![most_confident(cells.clone(), k); candidates];
        let us = time(&mut || {
            let s: f32 = kept.iter().map(|r| best_match(&query, r)).sum();
            std::hint::black_box(s);
            Ok(())
        })? * 1e3
            / candidates as f64;
        // int8 values and an f32 scale a region
        let bytes = k * (width + 4);
        per_k.push(serde_json::json!({"cells": k, "bytes": bytes,
            "bytes_vs_slot_and_thumb": bytes as f64 / slot,
            "score_us": us, "score_vs_global": us / global_us}));
        if !json {
            eprintln!("{k:>2} regions: {bytes} bytes a frame ({:.2}x an index slot and its thumbnail), scoring a candidate {us:.2} us ({:.1}x its global cosine)", bytes as f64 / slot, us / global_us);
        }
    }
    if !json {
        eprintln!("bundle {}: image tower {plain_ms:.1} ms, with the regions of its 49 cells {regions_ms:.1} ms ({:.2}x)",
            bundle.manifest.name, regions_ms / plain_ms);
    }
    println!(
        "{}",
        serde_json::json!({"bundle": bundle.manifest.name, "image_ms": plain_ms,
        "image_with_regions_ms": regions_ms, "ratio": regions_ms / plain_ms,
        "global_score_us": global_us, "regions": per_k})
    );
    Ok(())
}

/// From starting `moonlensd` (beside this binary) on `bundle` to its answer to a first
/// search over the socket, the median of 3 starts; the replay holds one frame, so what is
/// timed is start-up, not ingest.
fn first_answer(bundle: &std::path::Path) -> Result<f64> {
    use crate::error::Context;
    use std::io::{BufRead, Write};
    let daemon = std::env::current_exe()
        .context("locating moonlens-host")?
        .with_file_name("moonlensd");
    let dir = std::env::temp_dir().join(format!("moonlens-first-answer-{}", std::process::id()));
    let frames = dir.join("frames");
    std::fs::create_dir_all(&frames).context("making a scratch directory")?;
    image::RgbImage::from_pixel(64, 48, image::Rgb([90, 120, 200]))
        .save(frames.join("frame.png"))
        .context("writing a scratch frame")?;
    let mut runs = Vec::new();
    for run in 0..3 {
        let sock = dir.join(format!("s{run}.sock"));
        let t0 = Instant::now();
        let mut child = std::process::Command::new(&daemon)
            .arg("--bundle")
            .arg(bundle)
            .arg("--source")
            .arg(format!("dir:{}", frames.display()))
            .args(["--no-console", "--index"])
            .arg(dir.join(format!("index{run}")))
            .arg("--socket")
            .arg(&sock)
            .env("RUST_LOG", "error")
            .stdin(std::process::Stdio::null())
            .spawn()
            .context(format_args!("starting {}", daemon.display()))?;
        let answered = (|| -> Result<f64> {
            let stream = loop {
                match std::os::unix::net::UnixStream::connect(&sock) {
                    Ok(s) => break s,
                    Err(_) if t0.elapsed().as_secs() < 60 => {
                        std::thread::sleep(std::time::Duration::from_millis(2))
                    }
                    Err(e) => return Err(e).context("the daemon's socket never came up"),
                }
            };
            let mut w = stream.try_clone().context("socket")?;
            w.write_all(b"search a rabbit k=1\n").context("asking")?;
            let mut reader = std::io::BufReader::new(stream);
            let mut line = String::new();
            while !line.starts_with("OK") && !line.starts_with("ERROR") {
                line.clear();
                if reader.read_line(&mut line).context("reading the reply")? == 0 {
                    crate::bail!("the daemon closed the socket before answering");
                }
            }
            Ok(t0.elapsed().as_secs_f64() * 1e3)
        })();
        let _ = child.kill();
        let _ = child.wait();
        runs.push(answered?);
    }
    let _ = std::fs::remove_dir_all(&dir);
    runs.sort_by(f64::total_cmp);
    Ok(runs[1])
}

/// A `/proc/self/status` line in MB (the kernel writes kB): this process's resident memory.
fn proc_status_mb(key: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kb: f64 = line[key.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// Where the time goes: each tower's optimized tract plan run `runs` times on the inputs
/// `encode` uses, every node timed through tract's own evaluation hook, totals per operator
/// kind, largest first. Prints one JSON line per tower.
pub fn profile(enc: &Encoder, runs: usize) -> Result<()> {
    use std::collections::HashMap;
    use tract_onnx::prelude::*;
    let img = image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(640, 480, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x * y) % 256) as u8])
    }));
    let [c, h, w] = enc.bundle().manifest.image.shape;
    let pixels = Tensor::from_shape(&[1, c, h, w], &enc.preprocess(&img))
        .map_err(|e| crate::Error::new(format!("{e:#}")))?;
    let ids: Vec<i64> = enc
        .tokenize("a rabbit next to the full moon")?
        .into_iter()
        .map(i64::from)
        .collect();
    let n = ids.len();
    let ids = Tensor::from_shape(&[1, n], &ids).map_err(|e| crate::Error::new(format!("{e:#}")))?;
    let mask = Tensor::from_shape(&[1, n], &vec![1i64; n])
        .map_err(|e| crate::Error::new(format!("{e:#}")))?;
    let (image_plan, text_plan) = enc.plans();
    for (tower, plan, inputs) in [
        ("image", image_plan, tvec![pixels.into_tvalue()]),
        (
            "text",
            text_plan,
            tvec![ids.into_tvalue(), mask.into_tvalue()],
        ),
    ] {
        let mut per_op: HashMap<String, (f64, usize)> = HashMap::new();
        let mut per_node: HashMap<String, f64> = HashMap::new();
        let mut total = 0.0;
        let mut state = tract_core::plan::SimpleState::new(plan)
            .map_err(|e| crate::Error::new(format!("{e:#}")))?;
        for run in 0..runs.max(1) + 2 {
            let t_run = Instant::now();
            let mut times: Vec<(String, f64)> = Vec::new();
            state
                .run_plan_with_eval(inputs.clone(), |ctx, st, node, input| {
                    let t = Instant::now();
                    let r = tract_core::plan::eval(ctx, st, node, input);
                    let ms = t.elapsed().as_secs_f64() * 1e3;
                    times.push((node.op().name().to_string(), ms));
                    *per_node
                        .entry(format!("{} ({})", node.name, node.op().name()))
                        .or_default() += ms;
                    r
                })
                .map_err(|e| crate::Error::new(format!("{tower} tower: {e:#}")))?;
            if run >= 2 {
                // two warm-up runs
                total += t_run.elapsed().as_secs_f64() * 1e3;
                for (op, ms) in times {
                    let e = per_op.entry(op).or_default();
                    e.0 += ms;
                    e.1 += 1;
                }
            }
        }
        let runs = runs.max(1) as f64;
        let mut ops: Vec<(String, f64, usize)> = per_op
            .into_iter()
            .map(|(op, (ms, count))| (op, ms / runs, (count as f64 / runs) as usize))
            .collect();
        ops.sort_by(|a, b| b.1.total_cmp(&a.1));
        let per_run = total / runs;
        eprintln!(
            "{tower} tower: {per_run:.2} ms a run ({} bundle)",
            enc.bundle().manifest.name
        );
        for (op, ms, count) in ops.iter().take(12) {
            eprintln!(
                "  {ms:8.3} ms {:5.1}%  {count:4} x {op}",
                100.0 * ms / per_run
            );
        }
        let mut nodes: Vec<(String, f64)> = per_node.into_iter().collect();
        nodes.sort_by(|a, b| b.1.total_cmp(&a.1));
        eprintln!("  slowest nodes:");
        for (name, ms) in nodes.iter().take(6) {
            eprintln!("  {:8.3} ms  {name}", ms / (runs + 2.0));
        }
        let top: Vec<serde_json::Value> = ops
            .iter()
            .take(12)
            .map(|(op, ms, count)| serde_json::json!({"op": op, "ms": ms, "nodes": count}))
            .collect();
        println!(
            "{}",
            serde_json::json!({"tower": tower, "bundle": enc.bundle().manifest.name,
                "ms_per_run": per_run, "ops": top})
        );
    }
    Ok(())
}

/// Re-projection (`reload`) against encoding, one thread, in the same run: entries per
/// second through the bundle's head from kept outputs, through the whole index path (read,
/// project, write `index.ml.next`, commit) on a scratch index of `entries`, and frames per
/// second through the whole image tower (what re-encoding would cost, with the frames).
pub fn reproject(enc: &Encoder, entries: usize, json: bool) -> Result<()> {
    use crate::encoder::reproject::Reprojector;
    use crate::index::{Expect, Index, Kept};
    let layout = *enc.layout();
    let head = Reprojector::load(enc.bundle(), &layout)?;
    // real backbone outputs of 8 different frames, copied with a little noise
    let frames: Vec<image::DynamicImage> = (0..8u32)
        .map(|k| {
            image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(320, 240, |x, y| {
                image::Rgb([
                    ((x * (k + 1)) % 256) as u8,
                    ((y * (9 - k)) % 256) as u8,
                    ((x + y + 40 * k) % 256) as u8,
                ])
            }))
        })
        .collect();
    enc.encode_images(&frames)?; // warm-up
    let t = Instant::now();
    let encoded = enc.encode_images(&frames)?;
    let encode_fps = frames.len() as f64 / t.elapsed().as_secs_f64();
    let mut rng = crate::host::train::linalg::Rng::new(3);
    let mut noisy = |v: &[f32]| -> Vec<f32> {
        v.iter()
            .map(|x| x + (rng.uniform() as f32 - 0.5) * 0.01)
            .collect()
    };
    let kept: Vec<Kept> = (0..entries)
        .map(|i| {
            let k = &encoded[i % encoded.len()].1;
            // the bridge embedding stays unit length (the tower mixes it in as it is)
            let base = noisy(&k.base);
            let n = base.iter().map(|x| x * x).sum::<f32>().sqrt();
            Kept {
                features: noisy(&k.features),
                base: base.iter().map(|x| x / n).collect(),
            }
        })
        .collect();
    let refs: Vec<&Kept> = kept.iter().collect();
    let t = Instant::now();
    let embeddings = head.project(&refs)?;
    let head_fps = entries as f64 / t.elapsed().as_secs_f64();
    // the whole path on a scratch index
    let dir = std::env::temp_dir().join(format!("moonlens-bench-reproject-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let expect = Expect {
        dim: enc.dim(),
        bundle_id: enc.bundle().id,
        layout,
        regions: crate::index::RegionLayout::NONE,
    };
    let mut index = Index::open_or_create_with(&dir, entries as u64, &expect)?;
    index.set_durable(false);
    for (k, e) in kept.iter().zip(&embeddings) {
        index.append_kept(0, "cam0", "f", e, b"", Some(k))?;
    }
    let t = Instant::now();
    let mut next = index.begin_next([9u8; 32], None)?;
    index.fill_next(&mut next, &mut |batch| {
        let k: Vec<&Kept> = batch.iter().filter_map(|p| p.kept.as_ref()).collect();
        Ok(head.project(&k)?.into_iter().map(Some).collect())
    })?;
    index.commit_next(next)?;
    let index_fps = entries as f64 / t.elapsed().as_secs_f64();
    drop(index);
    let _ = std::fs::remove_dir_all(&dir);
    if !json {
        eprintln!(
            "{entries} entries: head alone {head_fps:.0}/s, whole re-projection of an index {index_fps:.0}/s; \
             the image tower {encode_fps:.1} frames/s ({:.0}x slower than the re-projection)",
            index_fps / encode_fps
        );
    }
    println!(
        "{}",
        serde_json::json!({"bundle": enc.bundle().manifest.name, "entries": entries, "threads": 1,
            "head_per_s": head_fps, "index_per_s": index_fps, "encode_frames_per_s": encode_fps,
            "ratio_index_to_encode": index_fps / encode_fps})
    );
    Ok(())
}

/// CPU time this process has used (user + system), in ms.
fn process_cpu_ms() -> f64 {
    // SAFETY: getrusage writes into the struct we hand it and reads nothing else.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let ms = |t: libc::timeval| t.tv_sec as f64 * 1e3 + t.tv_usec as f64 / 1e3;
    ms(u.ru_utime) + ms(u.ru_stime)
}

/// One replay of `frames` through the daemon's own ingest pipeline ([`crate::daemon::ingest`])
/// with `workers` encode threads: frames a second (wall clock, from the first frame taken to
/// the last stored) and CPU ms a frame.
fn ingest_run(
    bundle: &crate::bundle::Bundle,
    frames: &Path,
    n: usize,
    workers: usize,
) -> Result<(f64, f64)> {
    use crate::daemon::{ingest, Shared};
    use crate::index::{Expect, Index};
    // as the daemon runs by default: with the regions it keeps
    let policy = crate::daemon::RegionPolicy::DEFAULT;
    let enc = crate::daemon::load_encoder(bundle, policy.keep > 0)?;
    let dir = std::env::temp_dir().join(format!(
        "moonlens-bench-ingest-{}-{workers}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let expect = Expect {
        dim: enc.dim(),
        bundle_id: bundle.id,
        layout: *enc.layout(),
        regions: crate::daemon::region_layout(&enc, policy.keep),
    };
    let index = Index::open_or_create_with(&dir, n as u64 + 8, &expect)?;
    let shared = std::sync::Arc::new(Shared::new(enc, index, "bench", Duration::from_secs(60)));
    let source = crate::source::dir::DirSource::open(
        frames.to_str().expect("a temp path"),
        Duration::ZERO,
        false,
    )?;
    let (cpu0, t0) = (process_cpu_ms(), Instant::now());
    ingest::start(
        shared.clone(),
        Box::new(source),
        ingest::Gates::OFF,
        workers,
    );
    while !shared.source_done() {
        std::thread::sleep(Duration::from_millis(2));
    }
    let (wall, cpu) = (t0.elapsed().as_secs_f64(), process_cpu_ms() - cpu0);
    let stored = shared.index().len() as usize;
    drop(shared);
    let _ = std::fs::remove_dir_all(&dir);
    if stored != n {
        crate::bail!("the replay stored {stored} of {n} frames");
    }
    Ok((n as f64 / wall, cpu / n as f64))
}

/// `bench ingest`: the bundled sample photos replayed `frames` times over through the
/// daemon's ingest pipeline (decode, image tower, thumbnail, index append) with one encode
/// worker and with one per core, in the same run: `fps_1`, `fps_all`, their ratio and CPU
/// ms a frame.
pub fn ingest(
    bundle: &crate::bundle::Bundle,
    images: &Path,
    frames: usize,
    json: bool,
) -> Result<()> {
    use crate::error::Context;
    let mut sources: Vec<PathBuf> = std::fs::read_dir(images)
        .context(format_args!("cannot read {}", images.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("png" | "jpg" | "jpeg")
            )
        })
        .collect();
    sources.sort();
    if sources.is_empty() {
        crate::bail!("no .png or .jpg frames in {}", images.display());
    }
    let dir = std::env::temp_dir().join(format!("moonlens-bench-frames-{}", std::process::id()));
    std::fs::create_dir_all(&dir).context("making a scratch directory")?;
    for i in 0..frames {
        let src = &sources[i % sources.len()];
        let ext = src.extension().and_then(|e| e.to_str()).unwrap_or("png");
        std::fs::copy(src, dir.join(format!("{i:06}.{ext}")))
            .context(format_args!("copying {}", src.display()))?;
    }
    let all = crate::daemon::ingest::workers(None);
    let result = (|| -> Result<_> {
        let (fps_1, cpu_1) = ingest_run(bundle, &dir, frames, 1)?;
        let (fps_all, cpu_all) = ingest_run(bundle, &dir, frames, all)?;
        Ok((fps_1, cpu_1, fps_all, cpu_all))
    })();
    let _ = std::fs::remove_dir_all(&dir);
    let (fps_1, cpu_1, fps_all, cpu_all) = result?;
    let speedup = fps_all / fps_1;
    if !json {
        eprintln!(
            "{frames} frames: 1 worker {fps_1:.1} fps ({cpu_1:.1} CPU ms a frame); {all} workers \
             {fps_all:.1} fps ({cpu_all:.1} CPU ms a frame): {speedup:.2}x"
        );
    }
    println!(
        "{}",
        serde_json::json!({"frames": frames, "workers": all, "fps_1": fps_1, "fps_all": fps_all,
            "speedup": speedup, "cpu_per_frame_ms": cpu_1, "cpu_per_frame_ms_all": cpu_all})
    );
    Ok(())
}
