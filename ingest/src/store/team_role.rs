//! The database role a care team's Grafana data source logs in as (migration 8): a LOGIN
//! role that is a member of `vigil_team_reader`, recorded in `team_db_roles`, and so reads
//! that team's patients, readings, rollups and alerts only. Created, granted, recorded and
//! audited in one transaction.

use tokio_postgres::{Client, GenericClient, error::SqlState};
use uuid::Uuid;

use serde_json::json;

use super::{StoreError, admin::find_team, audit};

/// Roles are cluster-wide; PostgreSQL silently truncates longer names.
const MAX_ROLE_BYTES: usize = 63;
/// Shorter passwords are refused; generated ones are 43 characters.
const MIN_PASSWORD_CHARS: usize = 16;

#[derive(Debug, Clone, serde::Serialize)]
pub struct TeamRole {
    pub team_id: Uuid,
    pub role: String,
    /// False when the team already had this role and only its password changed.
    pub created: bool,
}

/// A new random password for a team role: URL-safe, so it can go into a connection URL.
pub fn new_password() -> String {
    vigil_alerts::secrets::generate("")
}

/// The default name: the database's name keeps two databases on one server (a copy restored
/// beside its original, say) from sharing a team's role.
fn default_name(database: &str, team: Uuid) -> String {
    format!("{database}_team_{}", &team.simple().to_string()[..8])
}

fn check_name(role: &str) -> Result<(), StoreError> {
    if role.is_empty() || role.len() > MAX_ROLE_BYTES {
        return Err(StoreError::Conflict(format!(
            "role name {role:?} must be 1 to {MAX_ROLE_BYTES} bytes; choose one with --role"
        )));
    }
    Ok(())
}

/// Gives `team` its Grafana role, named `role` or after the database and team, with
/// `password`. Run again for the same team, it sets the new password and re-applies the
/// grants. A role that exists but is not this team's here is refused: it may be another
/// database's.
pub async fn grant_team_role(
    client: &mut Client,
    team: &str,
    role: Option<&str>,
    password: &str,
) -> Result<TeamRole, StoreError> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(StoreError::Conflict(format!(
            "the password must be at least {MIN_PASSWORD_CHARS} characters"
        )));
    }
    let team_id = find_team(client, team).await?;
    let tx = client.transaction().await?;
    let database: String = tx.query_one("SELECT current_database()", &[]).await?.get(0);
    let current: Option<String> = tx
        .query_opt(
            "SELECT role_name FROM team_db_roles WHERE team_id = $1 FOR UPDATE",
            &[&team_id],
        )
        .await?
        .map(|r| r.get(0));
    let role = match (role, &current) {
        (Some(wanted), Some(has)) if wanted != has => {
            return Err(StoreError::Conflict(format!(
                "team {team_id} already reads as role {has}; run without --role to set a new password"
            )));
        }
        (Some(wanted), _) => wanted.to_string(),
        (None, Some(has)) => has.clone(),
        (None, None) => default_name(&database, team_id),
    };
    check_name(&role)?;
    if let Some(other) = tx
        .query_opt(
            "SELECT team_id FROM team_db_roles WHERE role_name = $1 AND team_id <> $2",
            &[&role, &team_id],
        )
        .await?
    {
        let other: Uuid = other.get(0);
        return Err(StoreError::Conflict(format!(
            "role {role} already reads for team {other}"
        )));
    }
    let unrestricted: Option<bool> = tx
        .query_opt(
            "SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = $1",
            &[&role],
        )
        .await?
        .map(|r| r.get(0));
    let exists = unrestricted.is_some();
    if exists && current.is_none() {
        return Err(StoreError::Conflict(format!(
            "role {role} already exists and is no team's role in database {database}; roles are \
             shared by every database on the server, so choose another name with --role"
        )));
    }
    // Changed by hand since it was created; only a superuser can take that back.
    if unrestricted == Some(true) {
        return Err(StoreError::Conflict(format!(
            "role {role} is a superuser or bypasses row-level security, so it would read every \
             team; remove that attribute (as a superuser) and run this again"
        )));
    }
    // Only a SCRAM verifier is sent, so the password cannot reach the server's logs.
    let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
    let create = !exists;
    let set_password = if create {
        "SELECT format('CREATE ROLE %I LOGIN INHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE \
         NOREPLICATION NOBYPASSRLS PASSWORD %L', $1::text, $2::text)"
    } else {
        "SELECT format('ALTER ROLE %I PASSWORD %L', $1::text, $2::text)"
    };
    role_statement(&tx, &role, set_password, &verifier).await?;
    // Re-applied on every run, so a role whose grants were changed by hand is repaired.
    role_statement(
        &tx,
        &role,
        "SELECT format('GRANT vigil_team_reader TO %I', $1::text, $2::text)",
        "",
    )
    .await?;
    role_statement(
        &tx,
        &role,
        "SELECT format('GRANT CONNECT ON DATABASE %2$I TO %1$I', $1::text, $2::text)",
        &database,
    )
    .await?;
    // The team views come first, so dashboards' `readings` and `readings_hourly` are the
    // team's. It applies at login, which is how Grafana connects.
    role_statement(
        &tx,
        &role,
        "SELECT format('ALTER ROLE %I IN DATABASE %I SET search_path = team_scope, public', \
         $1::text, $2::text)",
        &database,
    )
    .await?;
    if current.is_none() {
        tx.execute(
            "INSERT INTO team_db_roles (role_name, team_id) VALUES ($1, $2)",
            &[&role, &team_id],
        )
        .await
        .map_err(|e| {
            if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
                StoreError::Conflict(format!(
                    "role {role} or team {team_id} was mapped meanwhile; run this again"
                ))
            } else {
                e.into()
            }
        })?;
    }
    audit::record(
        &tx,
        "team_grafana_role",
        None,
        json!({ "team_id": team_id, "role": role, "created": create }),
    )
    .await?;
    tx.commit().await?;
    Ok(TeamRole {
        team_id,
        role,
        created: create,
    })
}

/// Runs one statement about `role` that the server quotes itself with `format` (role and
/// database names cannot be bind parameters); `format_sql` takes `role` and `arg`.
async fn role_statement(
    db: &impl GenericClient,
    role: &str,
    format_sql: &str,
    arg: &str,
) -> Result<(), StoreError> {
    let statement: String = db.query_one(format_sql, &[&role, &arg]).await?.get(0);
    db.batch_execute(&statement).await.map_err(|e| {
        let code = e.code();
        if code == Some(&SqlState::INSUFFICIENT_PRIVILEGE) {
            StoreError::NotPermitted(format!(
                "{}: the database role vigil admin connects as needs CREATEROLE (and, from \
                 PostgreSQL 16, ADMIN OPTION on vigil_team_reader)",
                super::error::describe(&e)
            ))
        } else if code == Some(&SqlState::DUPLICATE_OBJECT)
            || code == Some(&SqlState::UNIQUE_VIOLATION)
        {
            StoreError::Conflict(format!(
                "role {role} was created meanwhile, perhaps by another database's admin"
            ))
        } else {
            e.into()
        }
    })
}
