//! PostgreSQL becomes unreachable: the service reports not-ready, keeps MQTT messages
//! unacknowledged, answers gRPC with a retryable status once its queue is full, and stores
//! everything once the database is back.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use serde_json::json;
use tokio::{net::TcpListener, sync::Notify, task::JoinSet};
use tonic::Code;
use vigil_proto::v1::SubmitReadingsRequest;

use crate::harness::*;

/// A TCP proxy in front of PostgreSQL that can cut every connection and refuse new ones.
struct Proxy {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    cut: Arc<Notify>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let up = Arc::new(AtomicBool::new(true));
        let cut = Arc::new(Notify::new());
        let (up2, cut2) = (up.clone(), cut.clone());
        tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((mut inbound, _)) = accepted else { continue };
                        if !up2.load(Ordering::SeqCst) {
                            continue;
                        }
                        connections.spawn(async move {
                            if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                            }
                        });
                    }
                    _ = cut2.notified() => connections.abort_all(),
                }
            }
        });
        Self { addr, up, cut }
    }

    fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cut.notify_one();
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

fn through_proxy(url: &str, proxy: SocketAddr) -> String {
    let (scheme, rest) = url.split_once("://").expect("url scheme");
    let (auth_host, path) = rest.split_once('/').expect("url path");
    let auth = auth_host
        .rsplit_once('@')
        .map(|(a, _)| format!("{a}@"))
        .unwrap_or_default();
    format!("{scheme}://{auth}{proxy}/{path}")
}

fn upstream_of(url: &str) -> SocketAddr {
    let config: tokio_postgres::Config = url.parse().expect("url");
    let host = match &config.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(h) => h.clone(),
        #[cfg(unix)]
        tokio_postgres::config::Host::Unix(_) => "127.0.0.1".into(),
    };
    let host = if host == "localhost" {
        "127.0.0.1".to_string()
    } else {
        host
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}").parse().expect("socket addr")
}

#[tokio::test]
async fn nothing_is_lost_while_the_database_is_down() {
    let db = TestDb::create().await;
    let proxy = Proxy::start(upstream_of(&db.url)).await;
    let mut s = settings(&db.url);
    s.database.url = through_proxy(&db.url, proxy.addr);
    s.database.connect_timeout_secs = 1;
    s.batch.queue_capacity = 4;
    s.batch.max_readings = 1;
    s.batch.linger_ms = 0;
    s.batch.max_retry_backoff_ms = 200;
    let app = TestApp::spawn(s).await;
    let reg = register(&db.url, "cgm").await;
    let device = MqttDevice::connect(None).await;
    let topic = app.readings_topic(reg.device);

    proxy.down();
    let n = 30;
    for i in 0..n {
        let r = json!({ "type": "blood_glucose", "measured_at": now_rfc3339(-60 * (i + 1)),
                        "value": 7.0, "unit": "mmol/L", "specimen": "interstitial" });
        device.publish(&topic, r.to_string()).await;
    }
    let http = app.http_addr;
    eventually("readiness reports the outage", || async move {
        http_get(http, "/readyz").await.map(|(code, _)| code) == Some(503)
    })
    .await;

    // The writer holds one batch and the queue is full of MQTT messages: gRPC is told to
    // back off rather than being made to wait.
    let mut grpc = app.grpc().await;
    let mut refused = None;
    for i in 0..50 {
        let request = SubmitReadingsRequest {
            readings: vec![glucose_pb(&now_rfc3339(-(n + i + 1) * 60), 5.0, "mmol/L")],
            ..Default::default()
        };
        if let Err(status) = grpc.submit_readings(with_token(request, &reg.token)).await {
            refused = Some(status);
            break;
        }
    }
    let status = refused.expect("gRPC refused while the database is down");
    assert!(
        matches!(status.code(), Code::Unavailable | Code::ResourceExhausted),
        "{status:?}"
    );
    assert!(status.metadata().get("retry-after-ms").is_some());

    let client = db.client().await;
    assert_eq!(count(&client, "SELECT count(*) FROM readings").await, 0);
    proxy.restore();
    wait_count(
        &client,
        "SELECT count(*) FROM readings WHERE channel = 'mqtt'",
        n,
    )
    .await;
    app.wait_ready().await;
    app.stop().await;
}
