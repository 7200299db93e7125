//! `vigil admin team grafana-role`: the role it creates logs in with the password printed
//! once and reads its own team only; run again it issues a new password; taken names are
//! refused; every run is audited without the password; erasure still works with row
//! security on.

use serde_json::Value;
use tokio::process::Command;
use tokio_postgres::Client;

use crate::database::TestDb;

/// Runs `vigil <args> --json` against the database; its JSON, or its error message.
async fn vigil(db: &TestDb, args: &[&str]) -> Result<Value, String> {
    let output = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(args)
        .env("VIGIL_DATABASE__URL", &db.url)
        .env_remove("VIGIL_CONFIG")
        .output()
        .await
        .expect("vigil runs");
    if output.status.success() {
        Ok(serde_json::from_slice(&output.stdout).unwrap_or(Value::Null))
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

async fn admin(db: &TestDb, args: &[&str]) -> Value {
    let mut all = vec!["admin"];
    all.extend_from_slice(args);
    all.push("--json");
    vigil(db, &all)
        .await
        .unwrap_or_else(|e| panic!("vigil {all:?}: {e}"))
}

async fn refused(db: &TestDb, args: &[&str], needle: &str) {
    let mut all = vec!["admin"];
    all.extend_from_slice(args);
    let err = vigil(db, &all).await.expect_err("refused");
    assert!(err.contains(needle), "{args:?}: {err}");
}

fn text(v: &Value, key: &str) -> String {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} in {v}"))
        .to_string()
}

async fn patients_seen(login: &Client) -> Vec<String> {
    login
        .query("SELECT id::text FROM patients", &[])
        .await
        .expect("patients")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn a_team_role_is_created_rotated_audited_and_reads_its_team_only() {
    let db = TestDb::create().await;
    vigil(&db, &["migrate"]).await.expect("migrate");
    let renal = admin(&db, &["team", "add", "--name", "Renal team"]).await;
    let renal_id = text(&renal, "team_id");
    admin(&db, &["team", "add", "--name", "Diabetes team"]).await;
    let ours = text(
        &admin(&db, &["patient", "add", "--team", "Renal team"]).await,
        "patient_id",
    );
    let theirs = text(
        &admin(&db, &["patient", "add", "--team", "Diabetes team"]).await,
        "patient_id",
    );

    let first = admin(&db, &["team", "grafana-role", "--team", "Renal team"]).await;
    let role = text(&first, "role");
    assert_eq!(
        role,
        format!("{}_team_{}", db.name(), &renal_id.replace('-', "")[..8])
    );
    assert_eq!(first["created"], true);
    let password = text(&first, "password");
    let login = db.login(&role, &password).await.expect("log in");
    assert_eq!(patients_seen(&login).await, vec![ours.clone()]);
    let path: String = login
        .query_one("SHOW search_path", &[])
        .await
        .expect("search_path")
        .get(0);
    assert_eq!(path, "team_scope, public");
    let teams: i64 = login
        .query_one("SELECT count(*) FROM care_teams", &[])
        .await
        .expect("teams")
        .get(0);
    assert_eq!(teams, 1);

    // Run again: a new password, the same role. Where the server checks passwords (not
    // under trust authentication) the old one stops working.
    let second = admin(&db, &["team", "grafana-role", "--team", &renal_id]).await;
    assert_eq!(
        (text(&second, "role"), &second["created"]),
        (role.clone(), &Value::Bool(false))
    );
    let new_password = text(&second, "password");
    assert_ne!(new_password, password);
    db.login(&role, &new_password).await.expect("new password");
    let checks_passwords = db.login(&role, "not-the-password-at-all").await.is_err();
    if checks_passwords {
        assert!(db.login(&role, &password).await.is_err(), "old password");
    } else {
        eprintln!("the test server does not check passwords: password changes not exercised");
    }

    let file = std::env::temp_dir().join(format!("{}-password", db.name()));
    std::fs::write(&file, "chosen-by-the-operator-42\n").expect("password file");
    let from_file = admin(
        &db,
        &[
            "team",
            "grafana-role",
            "--team",
            "Renal team",
            "--password-file",
            file.to_str().expect("path"),
        ],
    )
    .await;
    assert_eq!(
        from_file["password"],
        Value::Null,
        "a chosen password is not printed"
    );
    db.login(&role, "chosen-by-the-operator-42")
        .await
        .expect("the chosen password");
    if checks_passwords {
        assert!(db.login(&role, &new_password).await.is_err());
    }
    std::fs::write(&file, "short\n").expect("password file");
    refused(
        &db,
        &[
            "team",
            "grafana-role",
            "--team",
            "Renal team",
            "--password-file",
            file.to_str().expect("path"),
        ],
        "at least 16 characters",
    )
    .await;
    let _ = std::fs::remove_file(&file);

    refused(
        &db,
        &[
            "team",
            "grafana-role",
            "--team",
            "Renal team",
            "--role",
            "renal_other",
        ],
        "already reads as role",
    )
    .await;
    refused(
        &db,
        &[
            "team",
            "grafana-role",
            "--team",
            "Diabetes team",
            "--role",
            &role,
        ],
        "already reads for team",
    )
    .await;
    refused(
        &db,
        &[
            "team",
            "grafana-role",
            "--team",
            "Diabetes team",
            "--role",
            "vigil_grafana",
        ],
        "already exists",
    )
    .await;
    refused(
        &db,
        &["team", "grafana-role", "--team", "No such team"],
        "no care team",
    )
    .await;

    let owner = db.client().await;
    let audited: Vec<String> = owner
        .query(
            "SELECT detail::text FROM audit_log WHERE action = 'team_grafana_role' ORDER BY id",
            &[],
        )
        .await
        .expect("audit")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(audited.len(), 3, "{audited:?}");
    assert!(audited[0].contains("\"created\": true") && audited[0].contains(&role));
    for entry in &audited {
        for secret in [&password, &new_password, "chosen-by-the-operator-42"] {
            assert!(!entry.contains(secret), "{entry}");
        }
    }

    // Erasure runs as the owner, which row security does not restrict.
    admin(
        &db,
        &[
            "patient",
            "erase",
            "--patient",
            &ours,
            "--by",
            "IG",
            "--reason",
            "request 7",
        ],
    )
    .await;
    assert_eq!(patients_seen(&login).await, Vec::<String>::new());
    let left: i64 = owner
        .query_one(
            "SELECT count(*) FROM patients WHERE id::text = ANY($1)",
            &[&vec![ours, theirs]],
        )
        .await
        .expect("patients")
        .get(0);
    assert_eq!(left, 1, "only the erased patient is gone");
}
