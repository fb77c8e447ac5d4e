//! Watch matches and status to an MQTT broker, the way camera systems report events to home
//! automation (Frigate, Home Assistant): every `+MATCH` is also published as JSON on
//! `<topic>/match`, the status on `<topic>/status` (retained: a dashboard that subscribes
//! later still sees it) when the connection comes up and every [`STATUS_EVERY`].
//!
//! A broker that goes away never blocks ingest or queries: publishing only queues a message
//! in a bounded queue ([`QUEUE`]) and a full queue drops it, counted (`mqtt_dropped` in
//! status); one thread keeps the connection, reconnecting with a backoff from 0.5 s doubling
//! to 30 s. QoS 0 (at most once), like the socket's pushes.

use super::Shared;
use crate::protocol::HitView;
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// Messages waiting for the connection, at most (a broker away for a long time costs these
/// and nothing more).
pub const QUEUE: usize = 64;
/// How often the status is published while connected.
pub const STATUS_EVERY: Duration = Duration::from_secs(30);

/// Where to publish: `mqtt://host[:port]` and the topic prefix.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub topic: String,
}

impl Target {
    /// Parses `--mqtt mqtt://host[:port]` (port 1883 by default) with `--mqtt-topic`.
    pub fn parse(url: &str, topic: &str) -> crate::Result<Target> {
        let rest = url.strip_prefix("mqtt://").ok_or_else(|| {
            crate::Error::new(format!(
                "--mqtt {url:?}: give the broker as mqtt://host[:port] (TLS is not supported)"
            ))
        })?;
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(':') => (
                h,
                p.parse::<u16>().ok().filter(|&p| p > 0).ok_or_else(|| {
                    crate::Error::new(format!("--mqtt {url:?}: {p:?} is not a port"))
                })?,
            ),
            _ => (rest, 1883),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.contains('/') {
            crate::bail!("--mqtt {url:?}: no broker host");
        }
        let topic = topic.trim_end_matches('/');
        if topic.is_empty() || topic.contains(['+', '#', '\0']) {
            crate::bail!("--mqtt-topic {topic:?}: a topic prefix without wildcards");
        }
        Ok(Target {
            host: host.to_string(),
            port,
            topic: topic.to_string(),
        })
    }
}

/// The daemon's side: publishes without ever waiting.
pub struct Publisher {
    client: Client,
    topic: String,
}

impl Publisher {
    /// Starts the connection thread; the daemon's state is held weakly, so the thread ends
    /// with the daemon.
    pub fn start(target: &Target, shared: &Arc<Shared>) -> crate::Result<Publisher> {
        let id = format!("moonlensd-{}", std::process::id());
        let mut opts = MqttOptions::new(id, target.host.clone(), target.port);
        opts.set_keep_alive(Duration::from_secs(30));
        let (client, mut connection) = Client::new(opts, QUEUE);
        let status_client = client.clone();
        let topic = target.topic.clone();
        let weak: Weak<Shared> = Arc::downgrade(shared);
        let what = format!("mqtt://{}:{}", target.host, target.port);
        std::thread::Builder::new()
            .name("mqtt".into())
            .spawn(move || {
                let mut backoff = Duration::from_millis(500);
                let mut last_status: Option<Instant> = None;
                let mut connected = false;
                loop {
                    let Some(s) = weak.upgrade() else { return };
                    let event = match connection.recv_timeout(Duration::from_secs(1)) {
                        Ok(e) => e,
                        Err(rumqttc::RecvTimeoutError::Timeout) => Ok(Event::Outgoing(
                            rumqttc::Outgoing::PingReq, // nothing happened: a tick
                        )),
                        Err(rumqttc::RecvTimeoutError::Disconnected) => return,
                    };
                    match event {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            log::info!("mqtt: connected to {what}");
                            connected = true;
                            backoff = Duration::from_millis(500);
                            last_status = None;
                        }
                        Ok(_) => {}
                        Err(e) => {
                            if connected {
                                log::warn!("mqtt: {what}: {e}; reconnecting");
                            } else {
                                log::debug!("mqtt: {what}: {e}");
                            }
                            connected = false;
                            drop(s);
                            std::thread::sleep(backoff);
                            backoff = (backoff * 2).min(Duration::from_secs(30));
                            continue;
                        }
                    }
                    if connected && last_status.is_none_or(|t| t.elapsed() >= STATUS_EVERY) {
                        let body = serde_json::to_vec(&s.status()).expect("plain struct");
                        let topic = format!("{topic}/status");
                        if status_client
                            .try_publish(topic, QoS::AtMostOnce, true, body)
                            .is_err()
                        {
                            s.counters.mqtt_dropped.fetch_add(1, Relaxed);
                        }
                        last_status = Some(Instant::now());
                    }
                }
            })
            .map_err(|e| crate::Error::new(format!("cannot start the mqtt thread: {e}")))?;
        Ok(Publisher {
            client,
            topic: target.topic.clone(),
        })
    }

    /// Queues one match (`false`: the queue was full and it was dropped).
    pub fn publish_match(&self, watch: u32, text: &str, hit: &HitView) -> bool {
        // the watch, then the hit as the JSON protocol renders it (score, RFC 3339 ts, …)
        let mut body = serde_json::json!({"watch": watch, "text": text});
        if let (Some(o), Ok(serde_json::Value::Object(h))) =
            (body.as_object_mut(), serde_json::to_value(hit))
        {
            o.extend(h);
        }
        self.client
            .try_publish(
                format!("{}/match", self.topic),
                QoS::AtMostOnce,
                false,
                body.to_string(),
            )
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls_and_topics() {
        let t = Target::parse("mqtt://broker.lan:1884", "moonlens/").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.topic.as_str()),
            ("broker.lan", 1884, "moonlens")
        );
        assert_eq!(Target::parse("mqtt://10.0.0.2", "m").unwrap().port, 1883);
        assert_eq!(Target::parse("mqtt://[::1]:1883", "m").unwrap().host, "::1");
        for (url, topic, says) in [
            ("broker:1883", "m", "mqtt://host"),
            ("mqtts://broker", "m", "TLS"),
            ("mqtt://broker:x", "m", "not a port"),
            ("mqtt://:1883", "m", "no broker host"),
            ("mqtt://broker", "a/#", "wildcards"),
            ("mqtt://broker", "", "wildcards"),
        ] {
            let e = Target::parse(url, topic).unwrap_err().to_string();
            assert!(e.contains(says), "{url} {topic}: {e}");
        }
    }
}
