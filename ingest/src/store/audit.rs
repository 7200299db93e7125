//! The audit entry every `vigil admin` change writes, in the change's own transaction. The
//! database role that made it stands for "who": `vigil admin` has no other identity for its
//! operator. Entries about a patient carry their id, so an erasure redacts them with the
//! patient's other audit entries.

use serde_json::Value;
use tokio_postgres::GenericClient;
use uuid::Uuid;

use super::StoreError;

pub(crate) async fn record(
    db: &impl GenericClient,
    action: &str,
    patient: Option<Uuid>,
    detail: Value,
) -> Result<(), StoreError> {
    db.execute(
        "INSERT INTO audit_log (actor_kind, action, patient_id, detail)
         VALUES ('admin', $1, $2, $3::jsonb || jsonb_build_object('db_role', session_user))",
        &[&action, &patient, &detail],
    )
    .await?;
    Ok(())
}
