//! The query protocol: bytes in, typed [`Request`]s out ([`parse`]); typed [`Response`]s in,
//! bytes out ([`emit`]). No I/O, no model: pure functions, fuzzed (`moonlens-host fuzz
//! protocol`), documented in `docs/protocol.md`. This module holds the types both sides
//! share and the line framing.
//!
//! Two forms share every transport and are chosen per line: a line starting with `{` is a
//! JSON request and gets one JSON line back; anything else is the human form (AT/GRBL
//! style: `+HIT …` lines, then `OK …` or `ERROR <reason>`). Lines are at most
//! [`MAX_LINE`] bytes; [`LineBuffer`] enforces that on any byte stream.

pub mod emit;
pub mod parse;

pub use emit::{base64, render, render_match, rfc3339};
pub use parse::parse;

use serde_json::Value;

pub const MAX_LINE: usize = 4096;
pub const DEFAULT_K: usize = 5;

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Search {
        text: String,
        k: usize,
        /// only frames from this time on
        since: Option<When>,
        /// only frames up to this time
        until: Option<When>,
        source: Option<String>,
        /// `exact=1`: rank every entry exactly; `exact=0`: two stages; absent: the index
        /// chooses (two stages on rings large enough to need them, `index::search::Mode`)
        exact: Option<bool>,
        /// `regions=0`: rank by the whole frame's cosine alone; `regions=1` or absent: add the
        /// best region match where the index keeps regions (`moonlensd --region-weight`)
        regions: Option<bool>,
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
    /// The operator says frame `id` shows `text` (training data for heads that learn the site).
    Tag {
        id: u64,
        text: String,
    },
    /// Removes one tag of frame `id`, or all of them.
    Untag {
        id: u64,
        text: Option<String>,
    },
    /// The tags of one frame, or of every tagged frame.
    Tags {
        id: Option<u64>,
    },
    /// Swap in the bundle in this directory (same backbone), re-projecting the index.
    Reload {
        bundle: String,
        /// re-encode every entry from its thumbnail (a bundle over another backbone)
        from_thumbnails: bool,
    },
    Help,
}

/// A point in time as a request gives it: a span back from now (`10m`) or a time
/// (`2026-11-28T03:00:00Z`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    Ago { s: u64 },
    At { ms: i64 },
}

impl When {
    /// Unix milliseconds, given the clock's `now_ms`; a span longer than the clock's past
    /// (`since=18446744073709551615`) is the beginning of time, not a moment in the future.
    pub fn to_ms(self, now_ms: i64) -> i64 {
        match self {
            When::Ago { s } => {
                now_ms.saturating_sub(i64::try_from(s).unwrap_or(i64::MAX).saturating_mul(1000))
            }
            When::At { ms } => ms,
        }
    }
}

/// How to answer: the human form, or JSON echoing the request's `id`.
#[derive(Debug, Clone, PartialEq)]
pub enum Form {
    Human,
    Json { id: Value },
}

/// The form of a line without a request to answer (a `+MATCH` push).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Human,
    Json,
}

impl Form {
    pub fn style(&self) -> Style {
        match self {
            Form::Human => Style::Human,
            Form::Json { .. } => Style::Json,
        }
    }
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

/// One search result, ready to render. Its JSON form is its serde form: `score` rounded to
/// 4 decimals, `ts` as RFC 3339 (the human form prints the same values).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct HitView {
    pub id: u64,
    #[serde(serialize_with = "emit::score4")]
    pub score: f32,
    #[serde(rename = "ts", serialize_with = "emit::ts_rfc3339")]
    pub ts_ms: i64,
    pub source: String,
    pub label: String,
}

/// The `status` reply. Its fields, in this order, are the reply's fields in both forms
/// (`emit` renders them from the serialized struct: add a counter here and it is in both).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StatusView {
    pub frames: u64,
    pub capacity: u64,
    pub ingested: u64,
    pub dropped: u64,
    pub gated: u64,
    pub source_errors: u64,
    pub encode_errors: u64,
    pub store_errors: u64,
    pub pushes_lost: u64,
    pub mqtt_dropped: u64,
    pub fleet_sent: u64,
    pub fleet_failures: u64,
    pub source_done: bool,
    pub model: String,
    pub uptime_s: u64,
    pub watches: usize,
    /// the last reload: `none`, `running`, `done`, or `failed: <reason>`
    pub reload: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Response {
    Hits {
        hits: Vec<HitView>,
        ms: f64,
    },
    Status(StatusView),
    Thumb {
        id: u64,
        jpeg: Vec<u8>,
    },
    WatchAdded {
        n: u32,
    },
    Watches(Vec<(u32, String)>),
    /// (frame id, tag) pairs
    Tags(Vec<(u64, String)>),
    Done,
    Help,
    Error(String),
}

pub const HELP: &[&str] = &[
    "search <text> [k=N] [since=10m] [until=T] [source=S] [exact=0|1] [regions=0|1]  frames that match the text",
    "similar <id> [k=N]                           frames like frame <id> (not itself)",
    "thumb <id>                                   the frame's JPEG thumbnail, base64",
    "status                                       counters and model",
    "watch add <text> | watch list | watch del <n> standing queries that push +MATCH",
    "tag <id> <text> | untag <id> [<text>] | tags [<id>]  say what a frame shows (training)",
    "reload <bundle dir> [from=thumbnails]        swap in a retrained bundle (status: progress)",
    "JSON: {\"id\":1,\"cmd\":\"search\",\"text\":\"a rabbit\",\"k\":5}  (see docs/protocol.md)",
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::search::K_MAX;
    use serde_json::json;

    #[test]
    fn human_search_with_options() {
        let r = parse(b"search a rabbit next to the moon k=3 since=10m source=cam0").unwrap();
        assert_eq!(
            r.cmd,
            Command::Search {
                text: "a rabbit next to the moon".into(),
                k: 3,
                since: Some(When::Ago { s: 600 }),
                until: None,
                source: Some("cam0".into()),
                exact: None,
                regions: None
            }
        );
        assert_eq!(
            parse(b"search x k=1000").unwrap().cmd,
            Command::Search {
                text: "x".into(),
                k: K_MAX,
                since: None,
                until: None,
                source: None,
                exact: None,
                regions: None
            }
        );
        assert!(parse(b"search k=3").is_err());
        // two stages on request, in both forms; anything else about `exact` is an error
        for line in [
            &b"search x exact=0"[..],
            br#"{"cmd":"search","text":"x","exact":false}"#,
        ] {
            let Command::Search { exact, .. } = parse(line).unwrap().cmd else {
                panic!()
            };
            assert_eq!(exact, Some(false));
        }
        assert_eq!(
            parse(b"search x exact=1").unwrap().cmd,
            parse(br#"{"cmd":"search","text":"x","exact":true}"#)
                .unwrap()
                .cmd
        );
        // regions off on request, in both forms
        for line in [
            &b"search x regions=0"[..],
            br#"{"cmd":"search","text":"x","regions":false}"#,
        ] {
            let Command::Search { regions, text, .. } = parse(line).unwrap().cmd else {
                panic!("not a search")
            };
            assert_eq!((regions, text.as_str()), (Some(false), "x"));
        }
        assert!(parse(b"search x regions=some").is_err());
        assert!(parse(br#"{"cmd":"search","text":"x","regions":"no"}"#).is_err());
        assert!(parse(b"search x exact=maybe").is_err());
        assert!(parse(br#"{"cmd":"search","text":"x","exact":1}"#).is_err());
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
                since: None,
                until: None,
                source: None,
                exact: None,
                regions: None
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

    /// `since` and `until` take spans and RFC 3339 times, in both forms, one rule.
    #[test]
    fn since_and_until_take_spans_and_times() {
        let r = parse(b"search a cat since=2026-11-28T03:00:00Z until=5m").unwrap();
        let Command::Search { since, until, .. } = r.cmd else {
            panic!("{r:?}")
        };
        assert_eq!(
            since,
            Some(When::At {
                ms: 1_795_834_800_000
            })
        );
        assert_eq!(until, Some(When::Ago { s: 300 }));
        let r = parse(
            br#"{"cmd":"search","text":"a cat","since":"2026-11-28T11:00:00.5+08:00","until":60}"#,
        )
        .unwrap();
        let Command::Search { since, until, .. } = r.cmd else {
            panic!("{r:?}")
        };
        assert_eq!(
            since,
            Some(When::At {
                ms: 1_795_834_800_500
            })
        );
        assert_eq!(until, Some(When::Ago { s: 60 }));
        for bad in [
            "2026-13-01T00:00:00Z",
            "2026-02-30T00:00:00Z",
            "2026-11-28T03:00:00",
            "soon",
        ] {
            let e = parse(format!("search a cat until={bad}").as_bytes()).unwrap_err();
            assert!(e.reason.contains("until="), "{bad}: {e:?}");
        }
        // every time the replies print reads back as itself
        for ms in [
            0i64,
            1,
            999,
            86_399_999,
            951_782_400_000,
            1_795_834_800_123,
            -1,
        ] {
            assert_eq!(
                parse::parse_rfc3339_ms(&rfc3339(ms)),
                Some(ms),
                "{}",
                rfc3339(ms)
            );
        }
        assert!(When::Ago { s: u64::MAX }.to_ms(1000) < i64::MIN / 2);
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
        // a crafted slot's time prints, clamped, and never panics
        assert!(
            rfc3339(i64::MIN).starts_with("-9999-01-0"),
            "{}",
            rfc3339(i64::MIN)
        );
        assert!(
            rfc3339(i64::MAX).starts_with("9999-12-3"),
            "{}",
            rfc3339(i64::MAX)
        );
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
