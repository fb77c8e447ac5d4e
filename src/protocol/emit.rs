//! Replies: a typed [`Response`] to the bytes of one reply, in the request's form; `+MATCH`
//! pushes. A hit is rendered once per form, for `+HIT` and `+MATCH` alike: [`hit_human`], and
//! [`HitView`]'s serde form in JSON.

use super::{Form, HitView, Response, Style, HELP};
use serde_json::{json, Value};
use std::fmt::Write as _;

/// RFC 3339 UTC time of a unix timestamp in milliseconds, always with milliseconds
/// (`2026-11-28T03:00:00.000Z`). Times outside years -9999..=9999 (only a damaged or crafted
/// slot holds them) print as the nearest end of that range.
pub fn rfc3339(ms: i64) -> String {
    let ts = jiff::Timestamp::from_millisecond(ms).unwrap_or(if ms < 0 {
        jiff::Timestamp::MIN
    } else {
        jiff::Timestamp::MAX
    });
    ts.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

pub fn base64(data: &[u8]) -> String {
    base64::encode(data)
}

/// A hit's fields in the human form: `ID SCORE TIME SOURCE LABEL`.
pub fn hit_human(h: &HitView) -> String {
    format!(
        "{} {:.4} {} {} {}",
        h.id,
        h.score,
        rfc3339(h.ts_ms),
        clean(&h.source),
        clean(&h.label)
    )
}

/// A score as JSON: 4 decimals, as the human form prints it.
pub(super) fn score4<S: serde::Serializer>(score: &f32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((*score as f64 * 1e4).round() / 1e4)
}

pub fn ts_rfc3339<S: serde::Serializer>(ms: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339(*ms))
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
                    json!({"ok": true, "hits": hits, "ms": (ms * 100.0).round() / 100.0})
                }
                Response::Status(s) => {
                    let mut v = serde_json::to_value(s).expect("plain struct");
                    v["ok"] = json!(true);
                    v
                }
                Response::Thumb { id, jpeg } => {
                    json!({"ok": true, "frame": id, "mime": "image/jpeg", "thumb": base64(jpeg)})
                }
                Response::WatchAdded { n } => json!({"ok": true, "watch": n}),
                Response::Watches(w) => {
                    json!({"ok": true, "watches": w.iter().map(|(n, t)| json!({"watch": n, "text": t})).collect::<Vec<_>>()})
                }
                Response::Tags(t) => {
                    json!({"ok": true, "tags": t.iter().map(|(f, t)| json!({"frame": f, "text": t})).collect::<Vec<_>>()})
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
                        let _ = writeln!(s, "+HIT {}", hit_human(h));
                    }
                    let _ = writeln!(s, "OK {} hits {:.1} ms", hits.len(), ms);
                }
                Response::Status(x) => {
                    // the struct's fields in declaration order (serde_json keeps the order)
                    s.push_str("+STATUS");
                    let fields = serde_json::to_value(x).expect("plain struct");
                    for (k, v) in fields.as_object().expect("a struct is an object") {
                        match v {
                            Value::String(t) => write!(s, " {k}={}", clean(t)),
                            other => write!(s, " {k}={other}"),
                        }
                        .expect("writing to a String");
                    }
                    s.push_str("\nOK\n");
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
                Response::Tags(t) => {
                    for (f, text) in t {
                        let _ = writeln!(s, "+TAG {f} {}", clean(text));
                    }
                    let _ = writeln!(s, "OK {} tags", t.len());
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
pub fn render_match(style: Style, watch: u32, hit: &HitView) -> String {
    match style {
        Style::Json => format!(
            "{}\n",
            json!({"event": "match", "watch": watch, "hit": hit})
        ),
        Style::Human => format!("+MATCH {watch} {}\n", hit_human(hit)),
    }
}
