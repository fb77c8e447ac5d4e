//! Issue 18: watch matches and status to a real MQTT broker (Debian's `mosquitto`, started
//! on loopback by the test), a subscriber that receives them, and a broker that goes away
//! without blocking anything.
#![cfg(feature = "mqtt")]

mod common;
use common::*;
use moonlens::daemon::mqtt::{Publisher, Target, QUEUE};
use moonlens::daemon::{ingest, Shared};
use moonlens::encoder::Encoder;
use moonlens::index::Index;
use moonlens::protocol::HitView;
use moonlens::source::dir::DirSource;
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A mosquitto on a free loopback port, stopped on drop.
struct Broker {
    child: std::process::Child,
    port: u16,
}

impl Broker {
    fn start() -> Broker {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("mosquitto is not installed: board/dev-setup.sh installs it");
        let child = std::process::Command::new(bin)
            .args(["-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "mosquitto did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Broker { child, port }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Subscribes to `topic` and forwards (topic, payload, retained) of every message.
fn subscriber(port: u16, topic: &str) -> mpsc::Receiver<(String, String, bool)> {
    let mut opts = MqttOptions::new(
        format!("test-sub-{}", std::process::id()),
        "127.0.0.1",
        port,
    );
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut conn) = Client::new(opts, 10);
    client.subscribe(topic, QoS::AtMostOnce).unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _client = client; // the connection lives as long as its client
        for ev in conn.iter() {
            match ev {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let body = String::from_utf8_lossy(&p.payload).into_owned();
                    if tx.send((p.topic, body, p.retain)).is_err() {
                        return;
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = tx.send(("suback".into(), String::new(), false));
                }
                Ok(_) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    });
    rx
}

fn wait_for(
    rx: &mpsc::Receiver<(String, String, bool)>,
    what: impl Fn(&str) -> bool,
) -> (String, String, bool) {
    let t0 = Instant::now();
    loop {
        let left = Duration::from_secs(60).saturating_sub(t0.elapsed());
        let m = rx.recv_timeout(left).expect("no such message within 60 s");
        if what(&m.0) {
            return m;
        }
    }
}

#[test]
fn a_watch_match_reaches_an_mqtt_subscriber_and_a_lost_broker_blocks_nothing() {
    let broker = Broker::start();
    let matches = subscriber(broker.port, "mltest/#");
    wait_for(&matches, |t| t == "suback");

    let bundle = default_bundle();
    let enc = Encoder::load(&bundle).unwrap();
    let idx = Index::open_or_create(&tempdir("mqtt"), enc.dim(), 500, bundle.id).unwrap();
    let s = Arc::new(Shared::new(enc, idx, "dir", Duration::from_secs(60)));
    let url = format!("mqtt://127.0.0.1:{}", broker.port);
    s.start_mqtt(&Target::parse(&url, "mltest").unwrap())
        .unwrap();
    assert!(s
        .start_mqtt(&Target::parse(&url, "mltest").unwrap())
        .is_err());
    assert_eq!(s.answer(b"watch add a rabbit").0, "OK watch 1\n");
    // the status, retained, as soon as the daemon is connected
    let (_, status, _) = wait_for(&matches, |t| t == "mltest/status");
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert!(
        v["capacity"] == 500 && v.get("mqtt_dropped").is_some(),
        "{status}"
    );

    let src = DirSource::open(
        root().join("models/samples").to_str().unwrap(),
        Duration::from_millis(1),
        false,
    )
    .unwrap();
    ingest::start(s.clone(), Box::new(src), ingest::Gates::OFF, 2);
    let (_, body, retained) = wait_for(&matches, |t| t == "mltest/match");
    let m: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(!retained);
    assert_eq!(m["watch"], 1, "{body}");
    assert_eq!(m["text"], "a rabbit", "{body}");
    assert_eq!(m["label"], "rabbit.png", "{body}");
    assert!(
        m["id"].as_u64().unwrap() >= 1 && m["score"].as_f64().unwrap() > 0.0,
        "{body}"
    );
    assert!(m["ts"].as_str().unwrap().ends_with('Z'), "{body}");
    assert_eq!(m["source"], "dir", "{body}");

    // a subscriber that comes later still gets the retained status
    let late = subscriber(broker.port, "mltest/status");
    let (_, _, retained) = wait_for(&late, |t| t == "mltest/status");
    assert!(retained, "the status is published retained");

    // the broker goes away: queries and ingest go on, publishing drops (bounded, counted)
    drop(broker);
    let t0 = Instant::now();
    while !s.source_done() {
        assert!(t0.elapsed() < Duration::from_secs(120), "ingest stalled");
        std::thread::sleep(Duration::from_millis(20));
    }
    let t = Instant::now();
    let (reply, _) = s.answer(b"search a rabbit k=1");
    assert!(reply.contains("rabbit.png"), "{reply}");
    assert!(t.elapsed() < Duration::from_secs(5));
}

/// The publisher's queue is bounded: with no broker at all, publishing never waits and
/// everything past the queue is refused (the daemon counts those as `mqtt_dropped`).
#[test]
fn publishing_without_a_broker_never_waits() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port(); // closed again: nothing listens there
    let bundle = default_bundle();
    let enc = Encoder::load(&bundle).unwrap();
    let idx = Index::open_or_create(&tempdir("mqtt-none"), enc.dim(), 50, bundle.id).unwrap();
    let s = Arc::new(Shared::new(enc, idx, "dir", Duration::from_secs(60)));
    let p = Publisher::start(
        &Target::parse(&format!("mqtt://127.0.0.1:{port}"), "x").unwrap(),
        &s,
    )
    .unwrap();
    let hit = HitView {
        id: 1,
        score: 0.5,
        ts_ms: 0,
        source: "dir".into(),
        label: "f".into(),
    };
    let t = Instant::now();
    let accepted = (0..QUEUE * 4)
        .filter(|_| p.publish_match(1, "a rabbit", &hit))
        .count();
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert!(
        accepted <= QUEUE + 1 && accepted > 0,
        "{accepted} of {} accepted",
        QUEUE * 4
    );
}
