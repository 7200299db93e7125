//! Dashboard tests: the shipped Grafana provisioning and dashboards are checked statically,
//! then every query is run the way Grafana runs it (both interpolation stages emulated, as
//! the role of the dashboard's data source: operations, or each care team's) against freshly
//! migrated databases seeded with realistic data, on plain PostgreSQL and, when
//! `VIGIL_TEST_TIMESCALE_URL` is set, on TimescaleDB; and no role reads another team's
//! patients or more than its dashboards need.
//!
//! Environment: `VIGIL_TEST_DATABASE_URL` (a server where the role may create databases and
//! roles, and on which roles may log in from this host with a password), optionally
//! `VIGIL_TEST_TIMESCALE_URL`, and for the benchmark `VIGIL_BENCH_CGM_PATIENTS`.

// Shared with the end-to-end tests, which use all of it.
#[path = "../common/database.rs"]
#[allow(dead_code)]
mod database;
mod db;
mod grafana;
mod model;
mod panels;
mod rollups;
mod seed;
mod team_access;
mod validate;

use std::collections::{BTreeSet, HashMap};

use time::OffsetDateTime;

use crate::{
    db::{Reader, TeamLogin},
    grafana::VarValue,
    model::{Audience, QueryKind},
    panels::{Outcome, assert_ok},
};

#[test]
fn shipped_files_pass_the_validator() {
    let mut problems = validate::provisioning(
        &model::datasource_files(),
        &model::provider_files(),
        Audience::Operations,
    );
    problems.extend(validate::provisioning(
        &model::team_datasource_files(),
        &model::team_provider_files(),
        Audience::CareTeam,
    ));
    problems.extend(validate::same_data_source(
        &model::datasource_files(),
        &model::team_datasource_files(),
    ));
    problems.extend(validate::dashboards(
        &model::dashboards(),
        &model::datasource().uid,
    ));
    assert!(problems.is_empty(), "{problems:#?}");
    assert_eq!(model::dashboards().len(), 3);
}

/// Every panel and annotation query that returned rows somewhere, so a query that runs but
/// can never show anything (a misspelt type or specimen) fails.
fn assert_every_query_shows_data(outcomes: &[Outcome]) {
    let with_rows: BTreeSet<&str> = outcomes
        .iter()
        .filter(|o| o.rows > 0)
        .map(|o| o.place.as_str())
        .collect();
    let silent: Vec<String> = model::dashboards()
        .iter()
        .flat_map(|d| model::queries(&d.value))
        .filter(|q| q.kind != QueryKind::Variable && !with_rows.contains(q.place.as_str()))
        .map(|q| q.place)
        .collect();
    assert!(
        silent.is_empty(),
        "queries that never returned a row: {silent:#?}"
    );
}

fn report_slowest(server: &str, outcomes: &[Outcome]) {
    let slowest = outcomes.iter().max_by_key(|o| o.took).expect("queries ran");
    eprintln!(
        "{server}: {} queries; slowest {:?}: {} [{}; {}] ({} rows)",
        outcomes.len(),
        slowest.took,
        slowest.place,
        slowest.range,
        slowest.variables,
        slowest.rows
    );
}

async fn every_query_runs_on_seeded_data(server: &str) {
    let (db, mut client) = db::migrated(server).await;
    let now = OffsetDateTime::now_utc();
    seed::seed(&client, 42, now, 3).await;
    db::refresh_rollups(&client).await;
    let mut teams = db::team_logins(&db, &mut client).await;
    // A live database has statistics (autovacuum); a freshly seeded one has none.
    client.batch_execute("ANALYZE").await.expect("analyze");
    let timescale = db::engine(&client).await == "timescaledb";
    // The shipped file is for the default (plain PostgreSQL) path; on TimescaleDB the
    // README says to switch the flag on, and the shipped file must keep working unchanged.
    assert!(!model::datasource().timescaledb);
    let flags: &[bool] = if timescale { &[true, false] } else { &[false] };
    for &flag in flags {
        let outcomes =
            assert_ok(panels::run_all(&mut client, &mut teams, &panels::ranges(now), flag).await);
        assert_every_query_shows_data(&outcomes);
        report_slowest(&format!("{server} (timescaledb flag {flag})"), &outcomes);
        worklist_lists_the_right_patients(&mut teams, now, flag).await;
    }
}

/// The team's id and its login, as the team's own role sees it.
async fn team<'a>(teams: &'a mut [TeamLogin], name: &str) -> (String, &'a mut TeamLogin) {
    let login = teams
        .iter_mut()
        .find(|t| t.team == name)
        .unwrap_or_else(|| panic!("no login for {name}"));
    let id = login
        .client
        .query_one("SELECT id::text FROM care_teams WHERE name = $1", &[&name])
        .await
        .expect("the team's role sees its team")
        .get(0);
    (id, login)
}

/// The worklist picks out the patients the seeded data makes out of target, and only them,
/// each team's as that team's role.
async fn worklist_lists_the_right_patients(
    teams: &mut [TeamLogin],
    now: OffsetDateTime,
    flag: bool,
) {
    let range = panels::ranges(now)[2].1;
    let vars = |team: &str, quiet: &str| {
        HashMap::from([
            ("team".to_string(), VarValue::One(team.to_string())),
            ("quiet".to_string(), VarValue::One(quiet.to_string())),
        ])
    };

    let (clinic, login) = team(teams, "Hypertension clinic").await;
    let mut client = Reader::team(&mut login.client);
    let above = panels::run_one(
        &mut client,
        "vigil-worklist / Patients above their blood pressure target / A",
        &vars(&clinic, "3 days"),
        &range,
        flag,
    )
    .await;
    let above: Vec<(String, String)> = above
        .iter()
        .map(|r| (r.get("patient"), r.get("target below")))
        .collect();
    // 153/88 at 86 is above 145/85; 127/79 is controlled; the third stopped measuring.
    assert_eq!(
        above,
        vec![("NHS 9434765870".to_string(), "145/85".to_string())]
    );

    let quiet_3 = panels::run_one(
        &mut client,
        "vigil-worklist / Patients with missing data / A",
        &vars(&clinic, "3 days"),
        &range,
        flag,
    )
    .await;
    let quiet_7 = panels::run_one(
        &mut client,
        "vigil-worklist / Patients with missing data / A",
        &vars(&clinic, "7 days"),
        &range,
        flag,
    )
    .await;
    // Never measured (no last reading, listed first), and silent for five days.
    assert_eq!(quiet_3.len(), 2);
    assert!(
        quiet_3[0]
            .get::<_, Option<OffsetDateTime>>("last_reading")
            .is_none()
    );
    assert!(
        quiet_3[1]
            .get::<_, Option<OffsetDateTime>>("last_reading")
            .is_some()
    );
    assert_eq!(quiet_7.len(), 1);

    let (diabetes, login) = team(teams, "Diabetes team").await;
    let mut client = Reader::team(&mut login.client);
    let low_tir = panels::run_one(
        &mut client,
        "vigil-worklist / Patients with low time in range (CGM, 14 days) / A",
        &vars(&diabetes, "3 days"),
        &range,
        flag,
    )
    .await;
    let listed: Vec<(String, f64)> = low_tir
        .iter()
        .map(|r| (r.get("patient"), r.get("in range %")))
        .collect();
    // The poorly controlled CGM user first, the well controlled one not at all.
    assert!(
        listed
            .first()
            .is_some_and(|(p, tir)| p == "NHS 9100000027" && *tir < 50.0),
        "{listed:?}"
    );
    assert!(
        listed.iter().all(|(p, _)| p != "NHS 9100000019"),
        "{listed:?}"
    );
    assert!(
        listed.windows(2).all(|w| w[0].1 <= w[1].1),
        "lowest first: {listed:?}"
    );
}

#[tokio::test]
async fn every_query_runs_as_grafana_on_seeded_data() {
    for server in db::servers() {
        every_query_runs_on_seeded_data(&server).await;
    }
}

/// The alert tables are filled by the alert worker; before it runs (and for a new team)
/// every query must still succeed, with no rows.
#[tokio::test]
async fn every_query_runs_on_an_empty_database() {
    for server in db::servers() {
        let (db, mut client) = db::migrated(&server).await;
        vigil_ingest::store::admin::add_team(&mut client, "New team")
            .await
            .expect("team");
        let mut teams = db::team_logins(&db, &mut client).await;
        let timescale = db::engine(&client).await == "timescaledb";
        let now = OffsetDateTime::now_utc();
        assert_ok(panels::run_all(&mut client, &mut teams, &panels::ranges(now), timescale).await);
    }
}

/// The benchmark recorded in docs/dashboards.md: every query over 90 days with a care team
/// of `VIGIL_BENCH_CGM_PATIENTS` (default 50) patients on 5-minute CGM.
/// `cargo test --test dashboards -- --ignored --nocapture benchmark`
#[tokio::test]
#[ignore = "a benchmark: run it explicitly"]
async fn benchmark_slowest_panel_at_90_days() {
    let patients: usize = std::env::var("VIGIL_BENCH_CGM_PATIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    for server in db::servers() {
        let (db, mut client) = db::migrated(&server).await;
        let now = OffsetDateTime::now_utc();
        let started = std::time::Instant::now();
        let seeded = seed::seed(&client, 1, now, patients).await;
        db::refresh_rollups(&client).await;
        client
            .batch_execute("VACUUM ANALYZE")
            .await
            .expect("analyze");
        eprintln!(
            "{server}: seeded {} readings ({patients} CGM patients) and refreshed rollups in {:?}",
            seeded.readings,
            started.elapsed()
        );
        let timescale = db::engine(&client).await == "timescaledb";
        let ninety = &panels::ranges(now)[3..];
        let mut teams = db::team_logins(&db, &mut client).await;
        let mut outcomes =
            assert_ok(panels::run_all(&mut client, &mut teams, ninety, timescale).await);
        outcomes.sort_by_key(|o| std::cmp::Reverse(o.took));
        for o in outcomes.iter().take(5) {
            eprintln!(
                "  {:>9.1?}  {} [{}] {} rows",
                o.took, o.place, o.variables, o.rows
            );
        }
    }
}
