//! Migration 8 on both storage paths, from the outside: a care team's role reads its own
//! team's patients and nothing of another team's, whatever SQL it writes against whatever
//! it may read (found in the catalog, so a later grant is covered too); the operations role
//! reads counts and times and no patient data; neither reads secrets, raw payloads, the
//! audit log or partitions and chunks, and neither can write.

use std::collections::BTreeMap;

use time::OffsetDateTime;
use tokio_postgres::{Client, GenericClient};

use crate::{
    db::{self, TestDb},
    seed,
};

/// A care team as the test knows it: what identifies its data, and its role's login.
struct Team {
    name: &'static str,
    role: String,
    /// Its id and its patients', devices', NHS numbers' and alerts' ids, as they read in text.
    markers: Vec<String>,
    login: Client,
}

struct Fixture {
    db: TestDb,
    owner: Client,
    clinic: Team,
    diabetes: Team,
    engine: String,
}

async fn markers(owner: &Client, team: &str) -> Vec<String> {
    owner
        .query(
            "WITH t AS (SELECT id FROM care_teams WHERE name = $1),
                  p AS (SELECT p.id, p.nhs_number FROM patients p JOIN t ON p.team_id = t.id)
             SELECT id::text FROM t
             UNION SELECT id::text FROM p
             UNION SELECT nhs_number FROM p WHERE nhs_number IS NOT NULL
             UNION SELECT DISTINCT device_id::text FROM readings WHERE patient_id IN (SELECT id FROM p)
             UNION SELECT a.id::text FROM alerts a JOIN t ON a.team_id = t.id",
            &[&team],
        )
        .await
        .expect("markers")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Seeded data (two teams with patients, readings, alerts, deliveries), quarantined
/// messages from both teams' devices, materialised rollups plus live hours, statistics, and
/// a login for each team's role.
async fn fixture(server: &str) -> Fixture {
    let (db, mut owner) = db::migrated(server).await;
    seed::seed(&owner, 5, OffsetDateTime::now_utc(), 2).await;
    owner
        .batch_execute(
            "INSERT INTO quarantine (received_at, channel, device_id, reason, message,
                 payload_format, payload, payload_size, payload_truncated)
             SELECT now(), 'mqtt', r.device_id, 'implausible_value', 'seeded', 'message',
                    convert_to(r.patient_id::text, 'UTF8'), 36, false
             FROM (SELECT DISTINCT device_id, patient_id FROM readings) r",
        )
        .await
        .expect("quarantine from both teams' devices");
    db::refresh_rollups(&owner).await;
    owner.batch_execute("ANALYZE").await.expect("analyze");
    let engine = db::engine(&owner).await;
    let mut team = async |name: &'static str| {
        let role = owner
            .query_opt(
                "SELECT role_name FROM team_db_roles r JOIN care_teams t ON t.id = r.team_id
                 WHERE t.name = $1",
                &[&name],
            )
            .await
            .expect("mapping");
        assert!(
            role.is_none(),
            "{name} has no role before the test gives it one"
        );
        let login = db::team_login(&db, &mut owner, name).await;
        let role: String = login
            .query_one("SELECT current_user::text", &[])
            .await
            .expect("who")
            .get(0);
        Team {
            name,
            role,
            markers: markers(&owner, name).await,
            login,
        }
    };
    let clinic = team("Hypertension clinic").await;
    let diabetes = team("Diabetes team").await;
    assert!(clinic.markers.len() > 10 && diabetes.markers.len() > 10);
    Fixture {
        db,
        owner,
        clinic,
        diabetes,
        engine,
    }
}

/// Every relation outside the system catalogs that the current role may read any column
/// of, with those columns quoted for SQL.
async fn readable(db: &impl GenericClient) -> BTreeMap<String, Vec<String>> {
    db.query(
        "SELECT format('%I.%I', n.nspname, c.relname),
                array_agg(quote_ident(a.attname::text) ORDER BY a.attnum)
         FROM pg_class c
         JOIN pg_namespace n ON n.oid = c.relnamespace
         JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
         WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
           AND n.nspname NOT IN ('pg_catalog', 'information_schema')
           AND has_column_privilege(c.oid, a.attnum, 'SELECT')
         GROUP BY 1",
        &[],
    )
    .await
    .expect("readable relations")
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

/// Rows of `relation` whose readable columns, as text, contain any of `markers`.
async fn rows_with(
    db: &impl GenericClient,
    relation: &str,
    columns: &[String],
    markers: &[String],
) -> Result<i64, tokio_postgres::Error> {
    let row = columns
        .iter()
        .map(|c| format!("t.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    let patterns: Vec<String> = markers.iter().map(|m| format!("%{m}%")).collect();
    let sql = format!("SELECT count(*) FROM {relation} t WHERE ROW({row})::text LIKE ANY($1)");
    Ok(db.query_one(&sql, &[&patterns]).await?.get(0))
}

/// Our own schemas; a relation there that a role may read must also be readable.
fn ours(relation: &str) -> bool {
    ["public.", "team_scope.", "operations."]
        .iter()
        .any(|schema| relation.starts_with(schema))
}

/// Searches everything `viewer` may read for `other`'s data (none may be found) and for its
/// own (each dashboard relation must show some), and, as the owner, shows the search finds
/// `other`'s data in those relations when it is there.
async fn sees_own_team_only(owner: &Client, viewer: &Team, other: &Team) {
    let relations = readable(&viewer.login).await;
    let expected = [
        "public.care_teams",
        "public.patients",
        "public.alerts",
        "team_scope.readings",
        "team_scope.readings_hourly",
    ];
    for r in expected {
        assert!(
            relations.contains_key(r),
            "{} cannot read {r}: {relations:?}",
            viewer.name
        );
    }
    for (relation, columns) in &relations {
        match rows_with(&viewer.login, relation, columns, &other.markers).await {
            Ok(n) => assert_eq!(
                n, 0,
                "{} reads {n} rows of {}'s in {relation}",
                viewer.name, other.name
            ),
            Err(e) if !ours(relation) => eprintln!("{relation} not readable: {e}"),
            Err(e) => panic!("{} reading {relation}: {e}", viewer.name),
        }
    }
    for r in expected {
        let own = rows_with(&viewer.login, r, &relations[r], &viewer.markers)
            .await
            .expect("own rows");
        assert!(own > 0, "{} sees none of its own rows in {r}", viewer.name);
        let theirs = rows_with(owner, r, &relations[r], &other.markers)
            .await
            .expect("as owner");
        assert!(theirs > 0, "the search finds {}'s rows in {r}", other.name);
    }
}

/// The query errors, and its message names a row of `shows` and none of `hides`.
async fn error_names(db: &Client, sql: &str, shows: &[String], hides: &[String]) {
    let err = db.query(sql, &[]).await.expect_err(sql);
    let text = err
        .as_db_error()
        .map(|e| e.message().to_string())
        .unwrap_or_default();
    assert!(
        shows.iter().any(|m| text.contains(m.as_str())),
        "{sql}: {text}"
    );
    assert!(
        !hides.iter().any(|m| text.contains(m.as_str())),
        "{sql} leaked: {text}"
    );
}

/// `markers` as an SQL text array (they are ids and digits, nothing to escape).
fn text_array(markers: &[String]) -> String {
    format!("ARRAY['{}']::text[]", markers.join("','"))
}

async fn count(db: &impl GenericClient, sql: &str) -> i64 {
    db.query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

/// Hand-written SQL that makes rows observable before a filter would: errors raised by a
/// condition, casts whose message carries the value, temporary tables shadowing the names
/// the filters use, settings a session may change, and statistics.
async fn hand_written_sql_cannot_reach_another_team(f: &Fixture) {
    let (a, b) = (&f.clinic, &f.diabetes);
    for (relation, column) in [
        ("readings", "patient_id"),
        ("readings_hourly", "patient_id"),
        ("patients", "id"),
        ("alerts", "patient_id"),
        ("care_teams", "id"),
    ] {
        // The cast fails on the first row it meets, naming it: that row is the team's own.
        error_names(
            &a.login,
            &format!("SELECT 1 FROM {relation} WHERE ({column}::text || '!')::int = 0"),
            &a.markers,
            &b.markers,
        )
        .await;
        // Dividing by zero (a uuid's text is 36 long) on another team's rows would reveal
        // them; it never runs there.
        let probe = |ids: &[String]| {
            format!(
                "SELECT count(*) FROM {relation}
                 WHERE CASE WHEN {column}::text = ANY({})
                            THEN 1 / (length({column}::text) - 36) ELSE 0 END = 0",
                text_array(ids)
            )
        };
        a.login
            .query_one(&probe(&b.markers), &[])
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "{relation}: another team's rows were evaluated: {}",
                    db::describe(&e)
                )
            });
        let err = a
            .login
            .query_one(&probe(&a.markers), &[])
            .await
            .expect_err("the probe fires on the team's own rows");
        assert_eq!(
            err.code().map(|c| c.code()),
            Some("22012"),
            "{relation}: {err}"
        );
    }

    // Temporary tables come first on a search_path: the filters must not resolve to them.
    a.login
        .batch_execute(&format!(
            "CREATE TEMP TABLE patients (id uuid, team_id uuid);
             CREATE TEMP TABLE team_db_roles (role_name text, team_id uuid);
             CREATE TEMP TABLE pg_roles (rolname name, oid oid);
             INSERT INTO patients SELECT m::uuid, NULL FROM unnest({}) m
                 WHERE m ~ '^[0-9a-f-]{{36}}$';
             INSERT INTO team_db_roles SELECT current_user, id FROM patients;
             INSERT INTO pg_roles SELECT rolname, oid FROM pg_catalog.pg_roles;",
            text_array(&b.markers)
        ))
        .await
        .expect("temporary tables");
    assert!(
        count(&a.login, "SELECT count(*) FROM patients").await > 0,
        "the temporary table shadows patients"
    );
    let relations = readable(&a.login).await;
    for relation in [
        "team_scope.readings",
        "team_scope.readings_hourly",
        "public.patients",
        "public.care_teams",
    ] {
        let n = rows_with(&a.login, relation, &relations[relation], &b.markers)
            .await
            .expect("read");
        assert_eq!(n, 0, "{relation} with shadowing temporary tables");
    }
    a.login
        .batch_execute("DISCARD TEMP")
        .await
        .expect("drop temporary tables");

    // The search_path only chooses which filtered relation a name means.
    a.login
        .batch_execute("SET search_path = public")
        .await
        .expect("search_path");
    for relation in ["readings", "patients", "alerts", "care_teams"] {
        match rows_with(&a.login, relation, &["*".into()], &b.markers).await {
            Ok(n) => assert_eq!(n, 0, "{relation} on search_path public"),
            // On TimescaleDB team roles have no grant on readings itself.
            Err(e) => assert_eq!(e.code().map(|c| c.code()), Some("42501"), "{relation}: {e}"),
        }
    }
    // Row security cannot be switched off by its subject: the query is refused.
    a.login
        .batch_execute("RESET search_path; SET row_security = off")
        .await
        .expect("set");
    let err = a
        .login
        .query_one("SELECT count(*) FROM patients", &[])
        .await
        .expect_err("row security cannot be switched off");
    assert_eq!(err.code().map(|c| c.code()), Some("42501"), "{err}");
    a.login
        .batch_execute("RESET row_security")
        .await
        .expect("reset");
    let err = a
        .login
        .batch_execute(&format!("SET ROLE \"{}\"", b.role))
        .await
        .expect_err("another team's role");
    assert_eq!(err.code().map(|c| c.code()), Some("42501"), "{err}");

    // Statistics are per table, not per team: PostgreSQL hides them from roles that row
    // security filters. The owner sees them, which shows the search would find them.
    let any = format!(
        "ANY(ARRAY(SELECT '%' || m || '%' FROM unnest({}) m))",
        text_array(&b.markers)
    );
    let stats = format!(
        "SELECT count(*) FROM pg_stats
         WHERE most_common_vals::text LIKE {any} OR histogram_bounds::text LIKE {any}"
    );
    assert_eq!(
        count(&a.login, &stats).await,
        0,
        "statistics of another team's rows"
    );
    assert!(
        count(&f.owner, &stats).await > 0,
        "the owner sees the statistics"
    );
}

/// Relations holding secrets, raw payloads, the audit trail, other teams' data unfiltered,
/// and every partition or chunk of readings: refused to `db`'s role.
async fn unreadable(owner: &Client) -> Vec<String> {
    let mut out: Vec<String> = [
        "public.devices",
        "public.clinicians",
        "public.webhooks",
        "public.audit_log",
        "public.quarantine",
        "public.device_bindings",
        "public.erasures",
        "public.alert_readings",
        "public.patient_alert_settings",
        "public.readings_hourly",
    ]
    .map(String::from)
    .into();
    let internal: Vec<String> = owner
        .query(
            "SELECT format('%I.%I', n.nspname, c.relname)
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relkind IN ('r', 'p', 'v', 'm')
               AND (c.oid IN (SELECT inhrelid FROM pg_inherits
                              WHERE inhparent = 'public.readings'::regclass)
                    OR c.relname = 'readings_hourly_store'
                    -- TimescaleDB's chunks and aggregate internals; its own catalog
                    -- tables there (job statistics) are readable by everyone by design.
                    OR (n.nspname = '_timescaledb_internal'
                        AND c.relname ~ '^(_hyper_|compress_hyper_|_materialized_hypertable_|_compressed_hypertable_|_partial_view_|_direct_view_)'))",
            &[],
        )
        .await
        .expect("partitions and chunks")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        internal
            .iter()
            .any(|r| r.contains("readings_p") || r.contains("_hyper_")),
        "the seeded readings have partitions or chunks: {internal:?}"
    );
    out.extend(internal);
    out
}

async fn refused(db: &impl GenericClient, sql: &str) {
    let err = db.batch_execute(sql).await.expect_err(sql);
    assert_eq!(err.code().map(|c| c.code()), Some("42501"), "{sql}: {err}");
}

/// `db`'s role reads none of `relations` and writes nothing anywhere.
async fn reads_none_of_and_writes_nothing(
    db: &Client,
    who: &str,
    relations: &[String],
    engine: &str,
) {
    for relation in relations {
        refused(db, &format!("SELECT * FROM {relation} LIMIT 1")).await;
    }
    let targets: Vec<(String, String, bool)> = db
        .query(
            "SELECT format('%I.%I', n.nspname, c.relname),
                    (SELECT quote_ident(attname) FROM pg_attribute
                     WHERE attrelid = c.oid AND attnum > 0 AND NOT attisdropped
                       AND attidentity = '' AND attgenerated = ''
                       AND has_column_privilege(c.oid, attnum, 'SELECT')
                     ORDER BY attnum LIMIT 1),
                    c.relkind IN ('r', 'p')
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname IN ('public', 'team_scope') AND c.relkind IN ('r', 'p', 'v', 'm')
               AND has_any_column_privilege(c.oid, 'SELECT')",
            &[],
        )
        .await
        .expect("readable relations")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert!(targets.len() >= 5, "{who}: {targets:?}");
    for (relation, column, table) in targets {
        for sql in [
            format!("INSERT INTO {relation} DEFAULT VALUES"),
            format!("UPDATE {relation} SET {column} = {column}"),
            format!("DELETE FROM {relation}"),
        ] {
            let err = db
                .batch_execute(&format!("BEGIN; {sql}; ROLLBACK"))
                .await
                .expect_err(&sql);
            db.batch_execute("ROLLBACK").await.expect("rollback");
            // A view that cannot be updated is refused before privileges are checked.
            if table {
                assert_eq!(
                    err.code().map(|c| c.code()),
                    Some("42501"),
                    "{who}: {sql}: {err}"
                );
            }
        }
        if table {
            refused(db, &format!("TRUNCATE {relation}")).await;
        }
    }
    // The maintenance functions run with the caller's rights; with the names resolving to
    // the real tables, each is refused.
    if engine == "partitioned" {
        for sql in [
            "CALL vigil_refresh_rollups()",
            "SELECT vigil_ensure_reading_partition(now() + interval '20 years')",
            "SELECT vigil_drop_reading_partitions('infinity')",
        ] {
            refused(db, &format!("SET search_path = public; {sql}")).await;
            db.batch_execute("RESET search_path").await.expect("reset");
        }
    }
}

/// What the operations dashboard needs, column by column: no patient id, value, title,
/// detail, payload or device.
const OPERATIONS_COLUMNS: &[(&str, &[&str])] = &[
    (
        "public.alert_events",
        &["id", "alert_id", "team_id", "kind", "at"],
    ),
    ("public.alerts", &["severity", "opened_at"]),
    ("public.care_teams", &["id", "name"]),
    (
        "public.deliveries",
        &["event_id", "channel", "state", "attempts", "last_error"],
    ),
    (
        "operations.ingest_hourly",
        &[
            "bucket",
            "channel",
            "type",
            "n",
            "n_late",
            "lag_sum_s",
            "lag_max_s",
        ],
    ),
    (
        "public.quarantine",
        &[
            "id",
            "received_at",
            "channel",
            "reason",
            "replayed_at",
            "replay_outcome",
        ],
    ),
    (
        "operations.readings",
        &["measured_at", "received_at", "channel", "type", "late"],
    ),
    ("public.rollup_status", &["rollup", "materialized_until"]),
    ("public.storage_engine", &["singleton", "engine"]),
];

async fn operations_reads_counts_and_times_only(f: &Fixture) {
    let ops = f.db.client().await;
    crate::db::role_settings(&ops, "vigil_grafana", false)
        .await
        .expect("the role's settings");
    ops.batch_execute("SET ROLE vigil_grafana")
        .await
        .expect("operations role");
    let relations = readable(&ops).await;
    let granted: BTreeMap<&str, Vec<&str>> = relations
        .iter()
        .filter(|(r, _)| ours(r))
        .map(|(r, cols)| (r.as_str(), cols.iter().map(String::as_str).collect()))
        .collect();
    let expected: BTreeMap<&str, Vec<&str>> = OPERATIONS_COLUMNS
        .iter()
        .map(|(r, cols)| (*r, cols.to_vec()))
        .collect();
    assert_eq!(granted, expected, "what vigil_grafana may read");
    let patient_markers: Vec<String> = f
        .owner
        .query(
            "SELECT id::text FROM patients
             UNION SELECT nhs_number FROM patients WHERE nhs_number IS NOT NULL
             UNION SELECT DISTINCT device_id::text FROM readings",
            &[],
        )
        .await
        .expect("patient markers")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(patient_markers.len() > 10, "{patient_markers:?}");
    for (relation, columns) in &relations {
        match rows_with(&ops, relation, columns, &patient_markers).await {
            Ok(n) => assert_eq!(n, 0, "vigil_grafana reads patient data in {relation}"),
            Err(e) if !ours(relation) => eprintln!("{relation} not readable: {e}"),
            Err(e) => panic!(
                "vigil_grafana reading {relation}: {}",
                crate::db::describe(&e)
            ),
        }
    }
    // Across every team: the same counts as the owner's.
    for table in [
        "readings",
        "alerts",
        "alert_events",
        "deliveries",
        "quarantine",
        "care_teams",
    ] {
        let sql = format!("SELECT count(*) FROM {table}");
        let (theirs, all) = (count(&ops, &sql).await, count(&f.owner, &sql).await);
        assert!(all > 0, "{table} is seeded");
        assert_eq!(theirs, all, "vigil_grafana counts every team's {table}");
    }
    for sql in [
        // Schema-qualified: on its search_path `readings` is the operations view, which has
        // no such columns at all.
        "SELECT patient_id FROM public.readings",
        "SELECT value FROM public.readings",
        "SELECT device_id FROM public.readings",
        "SELECT count(*) FROM public.readings",
        "SELECT * FROM public.ingest_hourly",
        "SELECT * FROM patients",
        "SELECT title FROM alerts",
        "SELECT detail FROM alerts",
        "SELECT patient_id FROM alerts",
        "SELECT alert FROM alert_events",
        "SELECT payload FROM quarantine",
        "SELECT device_id FROM quarantine",
        "SELECT * FROM team_scope.readings",
        "SELECT * FROM team_db_roles",
    ] {
        refused(&ops, sql).await;
    }
    let mut unreadable = unreadable(&f.owner).await;
    unreadable.push("public.patients".into());
    reads_none_of_and_writes_nothing(&ops, "vigil_grafana", &unreadable, &f.engine).await;
}

/// The roles themselves: logins without any power beyond reading, each team's a member
/// of vigil_team_reader only.
async fn roles_are_plain_logins(f: &Fixture) {
    for team in [&f.clinic, &f.diabetes] {
        let row = f
            .owner
            .query_one(
                "SELECT rolcanlogin, rolsuper, rolcreaterole, rolcreatedb, rolbypassrls,
                        rolreplication,
                        ARRAY(SELECT b.rolname::text FROM pg_auth_members m
                              JOIN pg_roles b ON b.oid = m.roleid WHERE m.member = r.oid)
                 FROM pg_roles r WHERE rolname = $1",
                &[&team.role],
            )
            .await
            .expect("team role");
        let flags: (bool, bool, bool, bool, bool, bool, Vec<String>) = (
            row.get(0),
            row.get(1),
            row.get(2),
            row.get(3),
            row.get(4),
            row.get(5),
            row.get(6),
        );
        assert_eq!(
            flags,
            (
                true,
                false,
                false,
                false,
                false,
                false,
                vec!["vigil_team_reader".into()]
            ),
            "{}",
            team.role
        );
        assert!(team.role.starts_with(f.db.name()), "{}", team.role);
    }
    let grafana: (bool, bool, bool, bool) = {
        let row = f
            .owner
            .query_one(
                "SELECT rolcanlogin, rolsuper, rolcreaterole, rolbypassrls FROM pg_roles
                 WHERE rolname = 'vigil_grafana'",
                &[],
            )
            .await
            .expect("vigil_grafana");
        (row.get(0), row.get(1), row.get(2), row.get(3))
    };
    assert_eq!(grafana, (true, false, false, false));
}

async fn team_roles_and_operations_on(server: &str) {
    let f = fixture(server).await;
    roles_are_plain_logins(&f).await;
    sees_own_team_only(&f.owner, &f.clinic, &f.diabetes).await;
    sees_own_team_only(&f.owner, &f.diabetes, &f.clinic).await;
    hand_written_sql_cannot_reach_another_team(&f).await;
    let unreadable = unreadable(&f.owner).await;
    for team in [&f.clinic, &f.diabetes] {
        reads_none_of_and_writes_nothing(&team.login, team.name, &unreadable, &f.engine).await;
    }
    operations_reads_counts_and_times_only(&f).await;
}

/// Grafana's roles × other teams' rows: zero leaks.
#[tokio::test]
async fn team_roles_read_their_team_only_and_operations_no_patient_data() {
    for server in db::servers() {
        team_roles_and_operations_on(&server).await;
    }
}
