//! Requests: one line of bytes to a typed [`Request`], in either form. Each field has one
//! rule ([`k_rule`], [`when_rule`] for `since` and `until`, ids), used by the human and the
//! JSON form alike.

use super::{Command, Form, ParseError, Request, When, DEFAULT_K};
use crate::index::search::K_MAX;
use serde_json::Value;

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

/// `k`, the number of hits: a whole number from 1; more than [`K_MAX`] gets [`K_MAX`].
pub fn k_rule(k: Option<u64>) -> Result<usize, String> {
    match k {
        Some(k) if k > 0 => Ok(k.min(K_MAX as u64) as usize),
        _ => Err(format!("k must be a whole number 1..={K_MAX}")),
    }
}

/// `since` and `until`: a span back from now (seconds, or a number with a unit: `90s`,
/// `10m`, `2h`, `1d`) or an RFC 3339 time (`2026-11-28T03:00:00Z`, `…+08:00`).
pub fn when_rule(name: &str, v: &str) -> Result<When, String> {
    if let Some(s) = parse_duration_s(v) {
        return Ok(When::Ago { s });
    }
    parse_rfc3339_ms(v).map(|ms| When::At { ms }).ok_or_else(|| {
        format!("{name}={v}: use seconds, a span (90s, 10m, 2h, 1d) or a time like 2026-11-28T03:00:00Z")
    })
}

/// An RFC 3339 time with its offset (`2026-11-28T03:00:00Z`, `2026-11-28T11:00:00.5+08:00`)
/// as Unix milliseconds; anything else (no offset, a date that does not exist) is None.
pub fn parse_rfc3339_ms(v: &str) -> Option<i64> {
    v.parse::<jiff::Timestamp>()
        .ok()
        .map(jiff::Timestamp::as_millisecond)
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
            let (mut k, mut since, mut until, mut source) = (DEFAULT_K, None, None, None);
            let (mut exact, mut regions) = (None, None);
            let mut words = Vec::new();
            for w in rest.split_whitespace() {
                if let Some(v) = w.strip_prefix("k=") {
                    k = k_rule(v.parse().ok()).map_err(human)?;
                } else if let Some(v) = w.strip_prefix("since=") {
                    since = Some(when_rule("since", v).map_err(human)?);
                } else if let Some(v) = w.strip_prefix("until=") {
                    until = Some(when_rule("until", v).map_err(human)?);
                } else if let Some(v) = w.strip_prefix("source=") {
                    source = Some(v.to_string());
                } else if let Some(v) = w.strip_prefix("exact=") {
                    exact = match v {
                        "1" | "true" => Some(true),
                        "0" | "false" => Some(false),
                        _ => return Err(human(format!("exact={v}: use exact=1 or exact=0"))),
                    };
                } else if let Some(v) = w.strip_prefix("regions=") {
                    regions = match v {
                        "1" | "true" => Some(true),
                        "0" | "false" => Some(false),
                        _ => return Err(human(format!("regions={v}: use regions=1 or regions=0"))),
                    };
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
                since,
                until,
                source,
                exact,
                regions,
            }
        }
        "similar" => {
            let mut parts = rest.split_whitespace();
            let id = parse_id(parts.next().unwrap_or("")).map_err(human)?;
            let mut k = DEFAULT_K;
            for w in parts {
                let v = w
                    .strip_prefix("k=")
                    .ok_or_else(|| human(format!("unexpected {w:?}")))?;
                k = k_rule(v.parse().ok()).map_err(human)?;
            }
            Command::Similar { id, k }
        }
        "thumb" => Command::Thumb {
            id: parse_id(rest).map_err(human)?,
        },
        "status" => Command::Status,
        "help" | "?" => Command::Help,
        "tag" | "untag" => {
            let (id, text) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
            let id = parse_id(id).map_err(human)?;
            let text = text.trim();
            if word.eq_ignore_ascii_case("tag") {
                if text.is_empty() {
                    return Err(human(
                        "tag needs a frame id and some text, e.g. tag 17 delivery van".into(),
                    ));
                }
                Command::Tag {
                    id,
                    text: text.into(),
                }
            } else {
                Command::Untag {
                    id,
                    text: (!text.is_empty()).then(|| text.into()),
                }
            }
        }
        "reload" if !rest.is_empty() => {
            let (bundle, from_thumbnails) = match rest.strip_suffix("from=thumbnails") {
                Some(b) => (b.trim_end(), true),
                None => (rest, false),
            };
            Command::Reload {
                bundle: bundle.to_string(),
                from_thumbnails,
            }
        }
        "reload" => {
            return Err(human(
                "reload needs a bundle directory, e.g. reload /var/lib/moonlens/site".into(),
            ))
        }
        "tags" => Command::Tags {
            id: if rest.is_empty() {
                None
            } else {
                Some(parse_id(rest).map_err(human)?)
            },
        },
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
    // a string (span or time) or a number of seconds
    let when_field = |name: &str| -> Result<Option<When>, ParseError> {
        match obj.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => when_rule(name, s).map(Some).map_err(&err),
            Some(v) => when_rule(name, &v.to_string()).map(Some).map_err(&err),
        }
    };
    let k = match obj.get("k") {
        None => DEFAULT_K,
        Some(v) => k_rule(v.as_u64()).map_err(err)?,
    };
    let cmd = match obj.get("cmd").and_then(Value::as_str) {
        Some("search") => Command::Search {
            text: str_field("text")?,
            k,
            since: when_field("since")?,
            until: when_field("until")?,
            source: match obj.get("source") {
                None => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(_) => return Err(err("\"source\" must be a string".into())),
            },
            exact: match obj.get("exact") {
                None => None,
                Some(Value::Bool(b)) => Some(*b),
                Some(_) => return Err(err("\"exact\" must be true or false".into())),
            },
            regions: match obj.get("regions") {
                None => None,
                Some(Value::Bool(b)) => Some(*b),
                Some(_) => return Err(err("\"regions\" must be true or false".into())),
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
        Some("tag") => Command::Tag {
            id: u64_field("frame")?,
            text: str_field("text")?,
        },
        Some("untag") => Command::Untag {
            id: u64_field("frame")?,
            text: match obj.get("text") {
                None => None,
                Some(_) => Some(str_field("text")?),
            },
        },
        Some("reload") => Command::Reload {
            bundle: str_field("bundle")?,
            from_thumbnails: match obj.get("from") {
                None => false,
                Some(Value::String(f)) if f == "thumbnails" => true,
                Some(_) => return Err(err("\"from\" can only be \"thumbnails\"".into())),
            },
        },
        Some("tags") => Command::Tags {
            id: match obj.get("frame") {
                None => None,
                Some(_) => Some(u64_field("frame")?),
            },
        },
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
