//! Clinicians and their tokens (`vgc_` + 32 random bytes, URL-safe base64; only the
//! SHA-256 is stored, the token is shown once).

use tokio_postgres::GenericClient;
use uuid::Uuid;

use crate::secrets::{self, hash};

const PREFIX: &str = "vgc_";

pub struct NewClinician {
    pub id: Uuid,
    pub token: String,
}

pub struct Clinician {
    pub id: Uuid,
    pub teams: Vec<Uuid>,
}

/// Registers a clinician in the given teams.
pub async fn add(
    db: &impl GenericClient,
    name: &str,
    teams: &[Uuid],
) -> Result<NewClinician, tokio_postgres::Error> {
    let token = secrets::generate(PREFIX);
    let id = Uuid::new_v4();
    db.execute(
        "INSERT INTO clinicians (id, name, token_hash) VALUES ($1, $2, $3)",
        &[&id, &name, &hash(&token)],
    )
    .await?;
    db.execute(
        "INSERT INTO clinician_teams (clinician_id, team_id) SELECT $1, unnest($2::uuid[])",
        &[&id, &teams],
    )
    .await?;
    Ok(NewClinician { id, token })
}

/// Sets or clears when the clinician's token stops working.
pub async fn set_token_expiry(
    db: &impl GenericClient,
    clinician: Uuid,
    expires_at: Option<time::OffsetDateTime>,
) -> Result<(), tokio_postgres::Error> {
    db.execute(
        "UPDATE clinicians SET token_expires_at = $2 WHERE id = $1",
        &[&clinician, &expires_at],
    )
    .await?;
    Ok(())
}

/// The clinician a token belongs to, with their teams; `None` for unknown, revoked or
/// expired tokens.
pub async fn authenticate(
    db: &impl GenericClient,
    token: &str,
) -> Result<Option<Clinician>, tokio_postgres::Error> {
    if !token.starts_with(PREFIX) {
        return Ok(None);
    }
    let row = db
        .query_opt(
            "SELECT c.id, coalesce(array_agg(t.team_id) FILTER (WHERE t.team_id IS NOT NULL), '{}')
             FROM clinicians c LEFT JOIN clinician_teams t ON t.clinician_id = c.id
             WHERE c.token_hash = $1 AND c.revoked_at IS NULL
               AND (c.token_expires_at IS NULL OR c.token_expires_at > now())
             GROUP BY c.id",
            &[&hash(token)],
        )
        .await?;
    Ok(row.map(|r| Clinician {
        id: r.get(0),
        teams: r.get(1),
    }))
}
