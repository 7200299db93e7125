//! Broker-enforced MQTT identity, tested as an attacker would: on a broker configured as
//! shipped, every device against every other device's topics, anonymous and wrong
//! credentials, services and care teams outside their grants, and credentials changed while
//! clients are connected.

use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::v5::ConnectReturnCode;
use tokio_postgres::Client as Db;
use uuid::Uuid;
use vigil_ingest::{
    broker::accounts::{self, Role},
    store::admin,
};

use crate::{
    harness::{TestApp, TestDb, add_device, count, eventually, now_rfc3339},
    secure_broker::{Answer, Client, INGEST_PASSWORD, INGEST_USER, Login, SecureBroker},
};

const QUIET: Duration = Duration::from_millis(1500);

fn glucose(offset_secs: i64) -> String {
    glucose_of(offset_secs, 6.1)
}

fn glucose_of(offset_secs: i64, value: f64) -> String {
    format!(
        r#"{{"type":"blood_glucose","measured_at":"{}","value":{value},"unit":"mmol/L"}}"#,
        now_rfc3339(offset_secs)
    )
}

async fn team_with_patient(db: &mut Db) -> (Uuid, Uuid) {
    let team = admin::add_team(db, &format!("team {}", Uuid::new_v4()))
        .await
        .expect("team");
    let (patient, _) = admin::add_patient(db, &team.to_string(), None, None)
        .await
        .expect("patient");
    (team, patient)
}

/// Waits until the broker admits `device` (broker-sync has applied its registration).
async fn admitted(port: u16, device: Uuid, token: &str) -> Client {
    let start = Instant::now();
    loop {
        if let Ok(client) = Client::device(port, device, token).await {
            return client;
        }
        assert!(
            start.elapsed() < crate::harness::WAIT,
            "device {device} never admitted by the broker"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn every_identity_reaches_only_its_own_topics() {
    let db = TestDb::create().await;
    let broker = SecureBroker::start(&db.url).await;
    let app = TestApp::spawn(broker.settings.clone()).await;
    let mut sql = db.client().await;
    let (team_a, patient_a) = team_with_patient(&mut sql).await;
    let (team_b, patient_b) = team_with_patient(&mut sql).await;
    let mut devices = Vec::new();
    for patient in [patient_a, patient_a, patient_b] {
        devices.push(add_device(&db.url, patient, "glucose_meter").await);
    }
    accounts::put_account(
        &mut sql,
        "team-a",
        Role::Team,
        Some(team_a),
        "team-a-password-0123",
    )
    .await
    .expect("team account");
    accounts::put_account(
        &mut sql,
        "vigil-alerts",
        Role::Alerts,
        None,
        "alerts-password-0123",
    )
    .await
    .expect("alerts account");
    let port = broker.port;

    // Nobody gets in without the right credentials.
    let anonymous = Client::connect(
        port,
        Login {
            username: None,
            password: None,
        },
    )
    .await;
    assert_eq!(anonymous.err(), Some(ConnectReturnCode::NotAuthorized));
    let (d0, t0) = &devices[0];
    let (d2, t2) = &devices[2];
    admitted(port, *d0, t0).await;
    for (who, token) in [
        (*d0, "vgd_not-the-token".to_string()),
        (*d0, t2.clone()),
        (*d2, t0.clone()),
    ] {
        let refused = Client::device(port, who, &token).await.err();
        assert_eq!(
            refused,
            Some(ConnectReturnCode::NotAuthorized),
            "device {who} with a wrong token"
        );
    }

    // Each device: its own results topic, every other device's results topic and a
    // wildcard over everything, then a publish to every other device's readings topic.
    let mut clients = Vec::new();
    for (id, token) in &devices {
        let mut client = admitted(port, *id, token).await;
        assert_eq!(
            client
                .subscribe(&broker.topic(&format!("devices/{id}/results")))
                .await,
            Answer::Accepted
        );
        for (other, _) in devices.iter().filter(|(o, _)| o != id) {
            client
                .subscribe(&broker.topic(&format!("devices/{other}/results")))
                .await;
        }
        client.subscribe(&broker.topic("#")).await;
        client.subscribe("#").await;
        for (other, _) in devices.iter().filter(|(o, _)| o != id) {
            assert_eq!(
                client
                    .publish(
                        &broker.topic(&format!("devices/{other}/readings")),
                        &glucose(-60)
                    )
                    .await,
                Answer::Refused,
                "device {id} published as device {other}"
            );
        }
        clients.push(client);
    }

    // Each device's own reading is accepted, stored and answered to it alone. (Different
    // values: two meters of one patient reporting the same value in the same second would
    // be one reading.)
    for (((id, _), client), value) in devices.iter().zip(clients.iter_mut()).zip([5.1, 5.2, 5.3]) {
        let own = broker.topic(&format!("devices/{id}/readings"));
        assert_eq!(
            client.publish(&own, &glucose_of(-30, value)).await,
            Answer::Accepted
        );
    }
    for ((id, _), client) in devices.iter().zip(clients.iter_mut()) {
        let own_results = broker.topic(&format!("devices/{id}/results"));
        let (topic, payload) = client.next_message().await;
        assert_eq!(topic, own_results);
        let result: serde_json::Value = serde_json::from_str(&payload).expect("JSON result");
        assert_eq!(result["accepted"], 1, "{payload}");
        let later = client.received(QUIET).await;
        assert!(
            later.iter().all(|(t, _)| *t == own_results),
            "device {id} received another identity's messages: {later:?}"
        );
    }
    let stored = db.client().await;
    for (id, _) in &devices {
        assert_eq!(
            count(
                &stored,
                &format!("SELECT count(*) FROM readings WHERE device_id = '{id}'")
            )
            .await,
            1,
            "device {id}: only its own reading is stored"
        );
    }
    assert_eq!(count(&stored, "SELECT count(*) FROM quarantine").await, 0);

    // The ingest service may not pose as a device.
    let mut ingest = Client::connect(
        port,
        Login {
            username: Some(INGEST_USER),
            password: Some(INGEST_PASSWORD),
        },
    )
    .await
    .expect("ingest account logs in");
    assert_eq!(
        ingest
            .publish(
                &broker.topic(&format!("devices/{d0}/readings")),
                &glucose(-20)
            )
            .await,
        Answer::Refused
    );

    // A team's consumer reads its own team's alerts only and cannot forge any.
    let mut team = Client::connect(
        port,
        Login {
            username: Some("team-a"),
            password: Some("team-a-password-0123"),
        },
    )
    .await
    .expect("team account logs in");
    for filter in [
        broker.topic(&format!("teams/{team_a}/alerts")),
        broker.topic(&format!("teams/{team_b}/alerts")),
        broker.topic("#"),
    ] {
        team.subscribe(&filter).await;
    }
    assert_eq!(
        team.publish(&broker.topic(&format!("teams/{team_a}/alerts")), "{}")
            .await,
        Answer::Refused
    );
    let mut alerts = Client::connect(
        port,
        Login {
            username: Some("vigil-alerts"),
            password: Some("alerts-password-0123"),
        },
    )
    .await
    .expect("alerts account logs in");
    assert_eq!(
        alerts
            .publish(&broker.topic(&format!("teams/{team_b}/alerts")), "team b")
            .await,
        Answer::Accepted
    );
    assert_eq!(
        alerts
            .publish(&broker.topic(&format!("teams/{team_a}/alerts")), "team a")
            .await,
        Answer::Accepted
    );
    assert_eq!(
        alerts
            .publish(&broker.topic(&format!("devices/{d0}/results")), "{}")
            .await,
        Answer::Refused
    );
    // Once per matching subscription (its own topic and the wildcard).
    let mut seen = team.received(QUIET).await;
    seen.dedup();
    assert_eq!(
        seen,
        vec![(
            broker.topic(&format!("teams/{team_a}/alerts")),
            "team a".to_string()
        )]
    );
    // Devices saw none of the team traffic either.
    for client in clients.iter_mut() {
        assert!(client.received(Duration::from_millis(200)).await.is_empty());
    }
    app.stop().await;
}

#[tokio::test]
async fn revoked_expired_and_rotated_credentials_are_dropped_by_the_broker() {
    let db = TestDb::create().await;
    let mut broker = SecureBroker::start(&db.url).await;
    let mut sql = db.client().await;
    let (_, patient) = team_with_patient(&mut sql).await;
    let (revoked, revoked_token) = add_device(&db.url, patient, "cgm").await;
    let (expiring, expiring_token) = add_device(&db.url, patient, "cgm").await;
    let (rotated, old_token) = add_device(&db.url, patient, "cgm").await;
    let port = broker.port;
    let mut revoked_client = admitted(port, revoked, &revoked_token).await;
    let mut expiring_client = admitted(port, expiring, &expiring_token).await;
    let mut rotated_client = admitted(port, rotated, &old_token).await;

    let start = Instant::now();
    admin::revoke_device(&mut sql, revoked)
        .await
        .expect("revoke");
    assert!(
        revoked_client.closed_by_broker(crate::harness::WAIT).await,
        "a revoked device stays connected"
    );
    println!(
        "revocation closed the connection after {:?}",
        start.elapsed()
    );
    assert_eq!(
        Client::device(port, revoked, &revoked_token).await.err(),
        Some(ConnectReturnCode::NotAuthorized)
    );

    let start = Instant::now();
    let new_token = admin::rotate_device_token(&mut sql, rotated, None)
        .await
        .expect("rotate");
    assert!(rotated_client.closed_by_broker(crate::harness::WAIT).await);
    println!("rotation closed the connection after {:?}", start.elapsed());
    assert_eq!(
        Client::device(port, rotated, &old_token).await.err(),
        Some(ConnectReturnCode::NotAuthorized)
    );
    admitted(port, rotated, &new_token).await;

    let expires = time::OffsetDateTime::now_utc() + time::Duration::seconds(2);
    admin::set_device_token_expiry(&mut sql, expiring, Some(expires))
        .await
        .expect("expiry");
    assert!(
        Client::device(port, expiring, &expiring_token)
            .await
            .is_ok(),
        "the token works until it expires"
    );
    assert!(expiring_client.closed_by_broker(crate::harness::WAIT).await);
    let late = time::OffsetDateTime::now_utc() - expires;
    println!("expiry closed the connection {late} after the expiry time");
    assert!(
        late >= time::Duration::ZERO,
        "closed before the expiry time"
    );
    assert_eq!(
        Client::device(port, expiring, &expiring_token).await.err(),
        Some(ConnectReturnCode::NotAuthorized)
    );

    // A broker account withdrawn by an operator is dropped the same way.
    accounts::put_account(
        &mut sql,
        "team-x",
        Role::Alerts,
        None,
        "team-x-password-0123",
    )
    .await
    .expect("account");
    let login = || Login {
        username: Some("team-x"),
        password: Some("team-x-password-0123"),
    };
    eventually("the new account is admitted", || async {
        Client::connect(port, login()).await.is_ok()
    })
    .await;
    let mut account = Client::connect(port, login()).await.expect("admitted");
    accounts::revoke_account(&mut sql, "team-x")
        .await
        .expect("revoke account");
    assert!(account.closed_by_broker(crate::harness::WAIT).await);
    assert_eq!(
        Client::connect(port, login()).await.err(),
        Some(ConnectReturnCode::NotAuthorized)
    );
    broker.stop_sync().await;
}

#[tokio::test]
async fn a_device_rebound_mid_stream_keeps_its_connection_and_its_readings_follow_the_binding() {
    let db = TestDb::create().await;
    let broker = SecureBroker::start(&db.url).await;
    let app = TestApp::spawn(broker.settings.clone()).await;
    let mut sql = db.client().await;
    let (_, first) = team_with_patient(&mut sql).await;
    let (_, second) = team_with_patient(&mut sql).await;
    let (device, token) = add_device(&db.url, first, "glucose_meter").await;
    let mut client = admitted(broker.port, device, &token).await;
    let readings = broker.topic(&format!("devices/{device}/readings"));
    client
        .subscribe(&broker.topic(&format!("devices/{device}/results")))
        .await;

    assert_eq!(
        client.publish(&readings, &glucose(-120)).await,
        Answer::Accepted
    );
    client.next_message().await;
    let at = time::OffsetDateTime::now_utc() - time::Duration::seconds(60);
    admin::rebind_device(&mut sql, device, second, at)
        .await
        .expect("rebind");
    assert_eq!(
        client.publish(&readings, &glucose(-30)).await,
        Answer::Accepted
    );
    client.next_message().await;

    let of = |patient: Uuid| {
        format!(
            "SELECT count(*) FROM readings WHERE device_id = '{device}' AND patient_id = '{patient}'"
        )
    };
    assert_eq!(count(&sql, &of(first)).await, 1);
    assert_eq!(count(&sql, &of(second)).await, 1);
    app.stop().await;
}

#[tokio::test]
async fn devices_connect_over_tls_with_the_development_ca() {
    let db = TestDb::create().await;
    let broker = SecureBroker::start(&db.url).await;
    let app = TestApp::spawn(broker.settings.clone()).await;
    let mut sql = db.client().await;
    let (_, patient) = team_with_patient(&mut sql).await;
    let (device, token) = add_device(&db.url, patient, "glucose_meter").await;
    admitted(broker.port, device, &token).await;
    let publish = |extra: &[&str]| {
        let mut command = std::process::Command::new("mosquitto_pub");
        command
            .args(["-V", "5", "-h", "localhost", "-q", "1"])
            .args(["-p", &broker.tls_port.to_string()])
            .args(["-u", &device.to_string(), "-P", &token])
            .args(["-t", &broker.topic(&format!("devices/{device}/readings"))])
            .args(["-m", &glucose(-10)])
            .args(extra);
        command.output().expect("mosquitto_pub runs")
    };
    let ca = broker.ca_file();
    let tls = publish(&["--cafile", ca.to_str().expect("path")]);
    assert!(
        tls.status.success(),
        "TLS publish failed: {}",
        String::from_utf8_lossy(&tls.stderr)
    );
    let plain = publish(&[]);
    assert!(
        !plain.status.success(),
        "plain MQTT accepted on the TLS port"
    );
    crate::harness::wait_count(
        &sql,
        &format!("SELECT count(*) FROM readings WHERE device_id = '{device}'"),
        1,
    )
    .await;
    app.stop().await;
}

#[tokio::test]
async fn the_ingest_service_reaches_the_broker_over_tls() {
    let db = TestDb::create().await;
    let broker = SecureBroker::start(&db.url).await;
    let mut over_tls = broker.settings.clone();
    over_tls.mqtt.port = broker.tls_port;
    over_tls.mqtt.tls_ca_file = Some(broker.ca_file());
    let app = TestApp::spawn(over_tls).await;
    let mut sql = db.client().await;
    let (_, patient) = team_with_patient(&mut sql).await;
    let (device, token) = add_device(&db.url, patient, "glucose_meter").await;
    let mut client = admitted(broker.port, device, &token).await;
    client
        .subscribe(&broker.topic(&format!("devices/{device}/results")))
        .await;
    let readings = broker.topic(&format!("devices/{device}/readings"));
    assert_eq!(
        client.publish(&readings, &glucose(-15)).await,
        Answer::Accepted
    );
    let (_, payload) = client.next_message().await;
    let result: serde_json::Value = serde_json::from_str(&payload).expect("JSON result");
    assert_eq!(result["accepted"], 1, "{payload}");
    app.stop().await;
}
