//! Broker identities of the services and of care teams' alert consumers (devices use their
//! own id and token). Managed by `vigil admin broker-account`.

use std::{fmt, str::FromStr};

use serde_json::json;
use tokio_postgres::Client;
use uuid::Uuid;

use super::credential::broker_hash;
use crate::store::{StoreError, audit};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Reads every device's readings, writes their results.
    Ingest,
    /// Publishes team alert events.
    Alerts,
    /// Reads one care team's alert events.
    Team,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Ingest => "ingest",
            Role::Alerts => "alerts",
            Role::Team => "team",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ingest" => Ok(Role::Ingest),
            "alerts" => Ok(Role::Alerts),
            "team" => Ok(Role::Team),
            other => Err(format!(
                "unknown role {other:?}; one of ingest, alerts, team"
            )),
        }
    }
}

fn valid_username(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z'))
        && name.len() <= 63
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '-' | '_'))
}

/// Creates the account, or gives an existing one this role and password and reinstates it.
/// `team` is required for, and only for, [`Role::Team`].
pub async fn put_account(
    client: &mut Client,
    username: &str,
    role: Role,
    team: Option<Uuid>,
    password: &str,
) -> Result<(), StoreError> {
    if !valid_username(username) {
        return Err(StoreError::Conflict(format!(
            "broker username {username:?} must start with a-z and hold only a-z, 0-9, - and _ \
             (at most 63 characters); device ids are reserved for devices"
        )));
    }
    match (role, team) {
        (Role::Team, None) => {
            return Err(StoreError::Conflict(
                "a team account needs --team".to_string(),
            ));
        }
        (Role::Ingest | Role::Alerts, Some(_)) => {
            return Err(StoreError::Conflict(format!(
                "--team applies only to team accounts, not {role}"
            )));
        }
        _ => {}
    }
    if password.len() < 16 {
        return Err(StoreError::Conflict(
            "broker passwords must be at least 16 characters".to_string(),
        ));
    }
    let tx = client.transaction().await?;
    tx.execute(
        "INSERT INTO broker_accounts (username, role, team_id, password_hash)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (username) DO UPDATE
             SET role = EXCLUDED.role, team_id = EXCLUDED.team_id,
                 password_hash = EXCLUDED.password_hash, revoked_at = NULL",
        &[&username, &role.as_str(), &team, &broker_hash(password)],
    )
    .await
    .map_err(|e| match e.code() {
        Some(&tokio_postgres::error::SqlState::FOREIGN_KEY_VIOLATION) => {
            StoreError::NotFound(format!("no care team {}", team.unwrap_or_default()))
        }
        _ => e.into(),
    })?;
    audit::record(
        &tx,
        "broker_account_put",
        None,
        json!({"username": username, "role": role.as_str(), "team_id": team}),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Withdraws an account from the broker (its connections are closed at the next sync).
pub async fn revoke_account(client: &mut Client, username: &str) -> Result<(), StoreError> {
    let tx = client.transaction().await?;
    let n = tx
        .execute(
            "UPDATE broker_accounts SET revoked_at = coalesce(revoked_at, now()) WHERE username = $1",
            &[&username],
        )
        .await?;
    if n == 0 {
        return Err(StoreError::NotFound(format!(
            "no broker account {username:?}"
        )));
    }
    audit::record(
        &tx,
        "broker_account_revoke",
        None,
        json!({"username": username}),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_cannot_pass_for_devices_or_break_the_files() {
        assert!(valid_username("vigil-ingest"));
        assert!(valid_username("team_diabetes_north"));
        assert!(!valid_username("0f8fad5b-d9cb-469f-a165-70867728950e"));
        assert!(!valid_username("Vigil"));
        assert!(!valid_username("a:b"));
        assert!(!valid_username("a b"));
        assert!(!valid_username("a/#"));
        assert!(!valid_username(""));
        assert!(!valid_username(&"a".repeat(64)));
    }
}
