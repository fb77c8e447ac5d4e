//! The query protocol: bytes in, typed [`Request`]s out; typed [`Response`]s in, bytes out.
//! No I/O, no model: pure functions, fuzzed (`fuzz/`), documented in `docs/protocol.md`.
//!
//! Two forms share every transport and are chosen per line: a line starting with `{` is a
//! JSON request and gets one JSON line back; anything else is the human form (AT/GRBL
//! style: `+HIT …` lines, then `OK …` or `ERROR <reason>`). Lines are at most
//! [`MAX_LINE`] bytes; [`LineBuffer`] enforces that on any byte stream.

use crate::index::search::K_MAX;
use serde_json::{json, Value};
use std::fmt::Write as _;

pub const MAX_LINE: usize = 4096;
pub const DEFAULT_K: usize = 5;

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Search {
        text: String,
        k: usize,
        since_s: Option<u64>,
        source: Option<String>,
    },
    Similar {
        id: u64,
        k: usize,
    },
    Thumb {
        id: u64,
    },
    Status,
    WatchAdd {
        text: String,
    },
    WatchList,
    WatchDel {
        n: u32,
    },
    Help,
}

/// How to answer: the human form, or JSON echoing the request's `id`.
#[derive(Debug, Clone, PartialEq)]
pub enum Form {
    Human,
    Json { id: Value },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub form: Form,
    pub cmd: Command,
}

/// A line that could not be parsed, with the form its answer must take.
#[derive(Debug, Clone, PartialEq)]
pub struct ParseError {
    pub form: Form,
    pub reason: String,
}

/// One event out of a byte stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Line {
    Text(Vec<u8>),
    /// A line longer than [`MAX_LINE`] was skipped (one event per long line).
    TooLong,
}

/// Splits a byte stream into lines of at most [`MAX_LINE`] bytes, in bounded memory.
#[derive(Debug, Default)]
pub struct LineBuffer {
    buf: Vec<u8>,
    discarding: bool,
}

impl LineBuffer {
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<Line>) {
        for &b in bytes {
            if b == b'\n' {
                if self.discarding {
                    self.discarding = false;
                } else {
                    let mut l = std::mem::take(&mut self.buf);
                    if l.last() == Some(&b'\r') {
                        l.pop();
                    }
                    out.push(Line::Text(l));
                }
                self.buf.clear();
            } else if !self.discarding {
                if self.buf.len() >= MAX_LINE {
                    self.discarding = true;
                    self.buf.clear();
                    out.push(Line::TooLong);
                } else {
                    self.buf.push(b);
                }
            }
        }
    }
}

fn parse_duration_s(s: &str) -> Option<u64> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().ok()?;
    let mul = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return None,
    };
    n.checked_mul(mul)
}

fn parse_k(v: &str) -> Result<usize, String> {
    match v.parse::<usize>() {
        Ok(0) | Err(_) => Err(format!("k must be a whole number 1..={K_MAX}")),
        Ok(k) => Ok(k.min(K_MAX)),
    }
}

fn parse_id(v: &str) -> Result<u64, String> {
    v.trim()
        .parse::<u64>()
        .map_err(|_| format!("{v:?} is not a frame id"))
}

/// Parse one line (without its newline).
pub fn parse(line: &[u8]) -> Result<Request, ParseError> {
    let human = |reason: String| ParseError {
        form: Form::Human,
        reason,
    };
    let text = std::str::from_utf8(line).map_err(|_| human("line is not valid UTF-8".into()))?;
    if text.chars().any(|c| c.is_control() && c != '\t') {
        return Err(human("line contains control characters".into()));
    }
    let text = text.trim();
    if text.starts_with('{') {
        return parse_json(text);
    }
    let (word, rest) = text.split_once(char::is_whitespace).unwrap_or((text, ""));
    let rest = rest.trim();
    let cmd = match word.to_ascii_lowercase().as_str() {
        "" => return Err(human("empty line; type help".into())),
        "search" | "s" => {
            let (mut k, mut since_s, mut source) = (DEFAULT_K, None, None);
            let mut words = Vec::new();
            for w in rest.split_whitespace() {
                if let Some(v) = w.strip_prefix("k=") {
                    k = parse_k(v).map_err(human)?;
                } else if let Some(v) = w.strip_prefix("since=") {
                    since_s =
                        Some(parse_duration_s(v).ok_or_else(|| {
                            human(format!("since={v}: use e.g. 90s, 10m, 2h, 1d"))
                        })?);
                } else if let Some(v) = w.strip_prefix("source=") {
                    source = Some(v.to_string());
                } else {
                    words.push(w);
                }
            }
            if words.is_empty() {
                return Err(human(
                    "search needs some text, e.g. search a rabbit k=5".into(),
                ));
            }
            Command::Search {
                text: words.join(" "),
                k,
                since_s,
                source,
            }
        }
        "similar" => {
            let mut parts = rest.split_whitespace();
            let id = parse_id(parts.next().unwrap_or("")).map_err(human)?;
            let mut k = DEFAULT_K;
            for w in parts {
                k = parse_k(
                    w.strip_prefix("k=")
                        .ok_or_else(|| human(format!("unexpected {w:?}")))?,
                )
                .map_err(human)?;
            }
            Command::Similar { id, k }
        }
        "thumb" => Command::Thumb {
            id: parse_id(rest).map_err(human)?,
        },
        "status" => Command::Status,
        "help" | "?" => Command::Help,
        "watch" => {
            let (sub, arg) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
            match sub {
                "add" if !arg.trim().is_empty() => Command::WatchAdd {
                    text: arg.trim().to_string(),
                },
                "list" => Command::WatchList,
                "del" => Command::WatchDel {
                    n: arg
                        .trim()
                        .parse()
                        .map_err(|_| human("watch del needs a watch number".into()))?,
                },
                _ => {
                    return Err(human(
                        "use watch add <text> | watch list | watch del <n>".into(),
                    ))
                }
            }
        }
        other => return Err(human(format!("unknown command {other:?}; type help"))),
    };
    Ok(Request {
        form: Form::Human,
        cmd,
    })
}

fn parse_json(text: &str) -> Result<Request, ParseError> {
    let v: Value = serde_json::from_str(text).map_err(|e| ParseError {
        form: Form::Json { id: Value::Null },
        reason: format!("invalid JSON: {e}"),
    })?;
    let id = v.get("id").cloned().unwrap_or(Value::Null);
    let err = |reason: String| ParseError {
        form: Form::Json { id: id.clone() },
        reason,
    };
    let obj = v
        .as_object()
        .ok_or_else(|| err("request must be a JSON object".into()))?;
    let str_field = |name: &str| -> Result<String, ParseError> {
        match obj.get(name) {
            Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
            _ => Err(err(format!("\"{name}\" must be a non-empty string"))),
        }
    };
    let u64_field = |name: &str| -> Result<u64, ParseError> {
        obj.get(name)
            .and_then(Value::as_u64)
            .ok_or_else(|| err(format!("\"{name}\" must be a whole number")))
    };
    let k = match obj.get("k") {
        None => DEFAULT_K,
        Some(v) => match v.as_u64() {
            Some(k) if k > 0 => (k as usize).min(K_MAX),
            _ => return Err(err(format!("\"k\" must be a whole number 1..={K_MAX}"))),
        },
    };
    let cmd = match obj.get("cmd").and_then(Value::as_str) {
        Some("search") => Command::Search {
            text: str_field("text")?,
            k,
            since_s: match obj.get("since") {
                None => None,
                Some(Value::String(s)) => {
                    Some(parse_duration_s(s).ok_or_else(|| err("\"since\" like \"10m\"".into()))?)
                }
                Some(v) => Some(
                    v.as_u64()
                        .ok_or_else(|| err("\"since\" must be seconds or like \"10m\"".into()))?,
                ),
            },
            source: match obj.get("source") {
                None => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(_) => return Err(err("\"source\" must be a string".into())),
            },
        },
        Some("similar") => Command::Similar {
            id: u64_field("frame")?,
            k,
        },
        Some("thumb") => Command::Thumb {
            id: u64_field("frame")?,
        },
        Some("status") => Command::Status,
        Some("help") => Command::Help,
        Some("watch_add") => Command::WatchAdd {
            text: str_field("text")?,
        },
        Some("watch_list") => Command::WatchList,
        Some("watch_del") => Command::WatchDel {
            n: u32::try_from(u64_field("watch")?)
                .map_err(|_| err("\"watch\" is too large".into()))?,
        },
        Some(other) => return Err(err(format!("unknown cmd {other:?}"))),
        None => return Err(err("missing \"cmd\"".into())),
    };
    Ok(Request {
        form: Form::Json { id },
        cmd,
    })
}

/// One search result, ready to render.
#[derive(Debug, Clone, PartialEq)]
pub struct HitView {
    pub id: u64,
    pub score: f32,
    pub ts_ms: i64,
    pub source: String,
    pub label: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StatusView {
    pub frames: u64,
    pub capacity: u64,
    pub ingested: u64,
    pub dropped: u64,
    pub gated: u64,
    pub source_errors: u64,
    pub source_done: bool,
    pub model: String,
    pub uptime_s: u64,
    pub watches: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Response {
    Hits { hits: Vec<HitView>, ms: f64 },
    Status(StatusView),
    Thumb { id: u64, jpeg: Vec<u8> },
    WatchAdded { n: u32 },
    Watches(Vec<(u32, String)>),
    Done,
    Help,
    Error(String),
}

pub const HELP: &[&str] = &[
    "search <text> [k=N] [since=10m] [source=S]   frames that match the text",
    "similar <id> [k=N]                           frames like frame <id>",
    "thumb <id>                                   the frame's JPEG thumbnail, base64",
    "status                                       counters and model",
    "watch add <text> | watch list | watch del <n> standing queries that push +MATCH",
    "JSON: {\"id\":1,\"cmd\":\"search\",\"text\":\"a rabbit\",\"k\":5}  (see docs/protocol.md)",
];

/// RFC 3339 UTC time of a unix timestamp in milliseconds.
pub fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, sod) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // civil-from-days (proleptic Gregorian), after H. Hinnant's published algorithm
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60,
        ms.rem_euclid(1000)
    )
}

pub fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                s.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

fn hit_json(h: &HitView) -> Value {
    json!({"id": h.id, "score": (h.score as f64 * 1e4).round() / 1e4, "ts": rfc3339(h.ts_ms),
           "source": h.source, "label": h.label})
}

/// Human-form text fields never contain a newline (labels come from file names).
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// The bytes to send for `resp`, newline-terminated.
pub fn render(form: &Form, resp: &Response) -> String {
    match form {
        Form::Json { id } => {
            let mut v = match resp {
                Response::Hits { hits, ms } => {
                    json!({"ok": true, "hits": hits.iter().map(hit_json).collect::<Vec<_>>(), "ms": (ms * 100.0).round() / 100.0})
                }
                Response::Status(s) => {
                    json!({"ok": true, "frames": s.frames, "capacity": s.capacity,
                    "ingested": s.ingested, "dropped": s.dropped, "gated": s.gated,
                    "source_errors": s.source_errors, "source_done": s.source_done, "model": s.model,
                    "uptime_s": s.uptime_s, "watches": s.watches})
                }
                Response::Thumb { id, jpeg } => {
                    json!({"ok": true, "frame": id, "mime": "image/jpeg", "thumb": base64(jpeg)})
                }
                Response::WatchAdded { n } => json!({"ok": true, "watch": n}),
                Response::Watches(w) => {
                    json!({"ok": true, "watches": w.iter().map(|(n, t)| json!({"watch": n, "text": t})).collect::<Vec<_>>()})
                }
                Response::Done => json!({"ok": true}),
                Response::Help => json!({"ok": true, "help": HELP}),
                Response::Error(e) => json!({"ok": false, "error": e}),
            };
            v.as_object_mut()
                .expect("object")
                .insert("id".into(), id.clone());
            let mut s = v.to_string();
            s.push('\n');
            s
        }
        Form::Human => {
            let mut s = String::new();
            match resp {
                Response::Hits { hits, ms } => {
                    for h in hits {
                        let _ = writeln!(
                            s,
                            "+HIT {} {:.4} {} {} {}",
                            h.id,
                            h.score,
                            rfc3339(h.ts_ms),
                            clean(&h.source),
                            clean(&h.label)
                        );
                    }
                    let _ = writeln!(s, "OK {} hits {:.1} ms", hits.len(), ms);
                }
                Response::Status(x) => {
                    let _ = writeln!(
                        s,
                        "+STATUS frames={} capacity={} ingested={} dropped={} gated={} source_errors={} source_done={} model={} uptime_s={} watches={}",
                        x.frames, x.capacity, x.ingested, x.dropped, x.gated, x.source_errors, x.source_done, x.model, x.uptime_s, x.watches
                    );
                    s.push_str("OK\n");
                }
                Response::Thumb { id, jpeg } => {
                    let _ = writeln!(s, "+THUMB {id} image/jpeg {} {}", jpeg.len(), base64(jpeg));
                    s.push_str("OK\n");
                }
                Response::WatchAdded { n } => {
                    let _ = writeln!(s, "OK watch {n}");
                }
                Response::Watches(w) => {
                    for (n, t) in w {
                        let _ = writeln!(s, "+WATCH {n} {}", clean(t));
                    }
                    s.push_str("OK\n");
                }
                Response::Done => s.push_str("OK\n"),
                Response::Help => {
                    for l in HELP {
                        let _ = writeln!(s, "+HELP {l}");
                    }
                    s.push_str("OK\n");
                }
                Response::Error(e) => {
                    let _ = writeln!(s, "ERROR {}", clean(e));
                }
            }
            s
        }
    }
}

/// An unsolicited `+MATCH` push for a watch, in both forms.
pub fn render_match(json_form: bool, watch: u32, hit: &HitView) -> String {
    if json_form {
        format!(
            "{}\n",
            json!({"event": "match", "watch": watch, "hit": hit_json(hit)})
        )
    } else {
        format!(
            "+MATCH {watch} {} {:.4} {} {} {}\n",
            hit.id,
            hit.score,
            rfc3339(hit.ts_ms),
            clean(&hit.source),
            clean(&hit.label)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_search_with_options() {
        let r = parse(b"search a rabbit next to the moon k=3 since=10m source=cam0").unwrap();
        assert_eq!(
            r.cmd,
            Command::Search {
                text: "a rabbit next to the moon".into(),
                k: 3,
                since_s: Some(600),
                source: Some("cam0".into())
            }
        );
        assert_eq!(
            parse(b"search x k=1000").unwrap().cmd,
            Command::Search {
                text: "x".into(),
                k: K_MAX,
                since_s: None,
                source: None
            }
        );
        assert!(parse(b"search k=3").is_err());
        assert!(parse(b"search x k=0").is_err());
        assert!(parse(b"search x since=5y").is_err());
    }

    #[test]
    fn json_requests_keep_their_id_even_when_wrong() {
        let r = parse(br#"{"id":7,"cmd":"search","text":"a rabbit","k":500}"#).unwrap();
        assert_eq!(r.form, Form::Json { id: json!(7) });
        assert_eq!(
            r.cmd,
            Command::Search {
                text: "a rabbit".into(),
                k: K_MAX,
                since_s: None,
                source: None
            }
        );
        let e = parse(br#"{"id":"a","cmd":"search"}"#).unwrap_err();
        assert_eq!(e.form, Form::Json { id: json!("a") });
        assert!(e.reason.contains("text"));
        assert_eq!(
            parse(b"{not json").unwrap_err().form,
            Form::Json { id: Value::Null }
        );
        assert!(parse(br#"{"id":1,"cmd":"thumb","frame":-1}"#).is_err());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(parse(b"\xff\xfe\x00binary")
            .unwrap_err()
            .reason
            .contains("UTF-8"));
        assert!(parse(b"search \x07bell").is_err());
        assert!(parse(b"").is_err());
        assert!(parse(b"launch missiles")
            .unwrap_err()
            .reason
            .contains("unknown command"));
        // any UTF-8 text is a query: Chinese, emoji, right-to-left
        for q in ["兔子 月饼", "🐇🌕", "ארנב"] {
            let line = format!("search {q}");
            assert!(matches!(
                parse(line.as_bytes()).unwrap().cmd,
                Command::Search { .. }
            ));
        }
    }

    #[test]
    fn long_lines_get_one_error_and_are_skipped() {
        let mut lb = LineBuffer::default();
        let mut out = Vec::new();
        let mut long = vec![b'a'; MAX_LINE * 3];
        long.extend_from_slice(b"\nstatus\r\n");
        // arrive in awkward pieces, as on a serial line
        for chunk in long.chunks(333) {
            lb.push(chunk, &mut out);
        }
        assert_eq!(out, vec![Line::TooLong, Line::Text(b"status".to_vec())]);
        let mut exact = vec![b'b'; MAX_LINE];
        exact.push(b'\n');
        out.clear();
        lb.push(&exact, &mut out);
        assert_eq!(out, vec![Line::Text(vec![b'b'; MAX_LINE])]);
    }

    #[test]
    fn rfc3339_and_base64_are_right() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339(1_795_787_045_000), "2026-11-27T13:44:05.000Z");
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn renders_both_forms() {
        let hits = vec![HitView {
            id: 3,
            score: 0.5,
            ts_ms: 0,
            source: "dir".into(),
            label: "rabbit.png".into(),
        }];
        let h = render(
            &Form::Human,
            &Response::Hits {
                hits: hits.clone(),
                ms: 1.0,
            },
        );
        assert_eq!(
            h,
            "+HIT 3 0.5000 1970-01-01T00:00:00.000Z dir rabbit.png\nOK 1 hits 1.0 ms\n"
        );
        let j: Value = serde_json::from_str(&render(
            &Form::Json { id: json!(1) },
            &Response::Hits { hits, ms: 1.0 },
        ))
        .unwrap();
        assert_eq!(j["id"], 1);
        assert_eq!(j["hits"][0]["label"], "rabbit.png");
        assert_eq!(
            render(&Form::Human, &Response::Error("bad\nthing".into())),
            "ERROR bad thing\n"
        );
    }
}
