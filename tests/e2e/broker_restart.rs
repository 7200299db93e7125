//! The broker restarts (persistence on, as shipped): the service's session comes back from
//! disk without its shared subscription, and the service must subscribe again.

use std::{path::PathBuf, process::Stdio, time::Duration};

use serde_json::json;

use crate::{child::free_port, harness::*};

/// A Mosquitto of this test's own, persisting to a temporary directory.
struct Broker {
    dir: PathBuf,
    port: u16,
    child: Option<tokio::process::Child>,
}

impl Broker {
    fn new() -> Self {
        let dir =
            std::env::temp_dir().join(format!("vigil-broker-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("broker dir");
        let port = free_port();
        let conf = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n\
             persistence_location {}/\nmax_queued_messages 100000\nuser root\n",
            dir.display()
        );
        std::fs::write(dir.join("mosquitto.conf"), conf).expect("broker conf");
        Self {
            dir,
            port,
            child: None,
        }
    }

    async fn start(&mut self) {
        let binary = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or("mosquitto");
        let child = tokio::process::Command::new(binary)
            .arg("-c")
            .arg(self.dir.join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("mosquitto starts");
        self.child = Some(child);
        let port = self.port;
        eventually("test broker listening", || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await;
    }

    /// A clean stop, which saves the persistent state.
    async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id().expect("running");
            std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .expect("kill -TERM");
            tokio::time::timeout(WAIT, child.wait())
                .await
                .expect("broker stops")
                .expect("wait");
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn readings_are_stored_after_the_broker_restarts() {
    let mut broker = Broker::new();
    broker.start().await;
    let db = TestDb::create().await;
    let mut s = settings(&db.url);
    s.mqtt.port = broker.port;
    let app = TestApp::spawn(s).await;
    let reg = register(&db.url, "scale").await;
    let topic = app.readings_topic(reg.device);
    let send = |port: u16, minutes: i64| {
        let topic = topic.clone();
        async move {
            let mut options = rumqttc::v5::MqttOptions::new(
                format!("pub-{}", uuid::Uuid::new_v4().simple()),
                "127.0.0.1",
                port,
            );
            options.set_keep_alive(Duration::from_secs(30));
            let (client, mut eventloop) = rumqttc::v5::AsyncClient::new(options, 10);
            let reading = json!({ "type": "body_weight", "measured_at": now_rfc3339(-60 * minutes),
                                  "value": 80.0 + minutes as f64 / 10.0, "unit": "kg" });
            client
                .publish(
                    topic,
                    rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                    false,
                    reading.to_string(),
                )
                .await
                .expect("queued");
            loop {
                match eventloop.poll().await {
                    Ok(rumqttc::v5::Event::Incoming(
                        rumqttc::v5::mqttbytes::v5::Packet::PubAck(_),
                    )) => break,
                    Ok(_) => {}
                    Err(e) => panic!("publisher: {e}"),
                }
            }
        }
    };
    let client = db.client().await;
    send(broker.port, 10).await;
    wait_count(&client, "SELECT count(*) FROM readings", 1).await;

    broker.stop().await;
    broker.start().await;
    // A message published before the service has subscribed again has no subscriber and is
    // dropped by the broker, so keep sending new readings until one is stored.
    let mut minutes = 9;
    eventually("a reading stored after the restart", || {
        minutes -= 1;
        let send = send(broker.port, minutes);
        let client = &client;
        async move {
            send.await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            count(client, "SELECT count(*) FROM readings").await >= 2
        }
    })
    .await;
    app.stop().await;
}
