use std::{pin::Pin, sync::Arc, time::Duration};

use deadpool_postgres::Pool;
use futures_util::Stream;
use serde_json::{Value, json};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use tokio::sync::{Notify, mpsc};
use tokio_postgres::GenericClient;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Response, Status, metadata::MetadataMap};
use uuid::Uuid;
use vigil_proto::v1::{self as pb, alert_service_server::AlertService};

use super::convert;
use crate::{
    clinicians::{self, Clinician},
    rules::Thresholds,
    store::{self, Alert, EventKind, State},
};

/// Events sent per query while catching up.
const CATCH_UP_PAGE: i64 = 500;
/// Waiters re-check the event table this often even without a notification.
const RECHECK: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct Alerts {
    pool: Pool,
    events: Arc<Notify>,
    stop: CancellationToken,
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

fn unavailable(e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("storage is unavailable: {e}"))
}

fn parse_id(value: &str, field: &str) -> Result<Uuid, Status> {
    Uuid::parse_str(value)
        .map_err(|_| Status::invalid_argument(format!("`{field}` must be a UUID")))
}

async fn audit(
    db: &impl GenericClient,
    who: &Clinician,
    action: &str,
    patient: Option<Uuid>,
    alert: Option<Uuid>,
    detail: Value,
) -> Result<(), Status> {
    db.execute(
        "INSERT INTO audit_log (actor_kind, actor_id, action, patient_id, alert_id, detail)
         VALUES ('clinician', $1, $2, $3, $4, $5)",
        &[&who.id, &action, &patient, &alert, &detail],
    )
    .await
    .map(|_| ())
    .map_err(internal)
}

fn bearer(metadata: &MetadataMap) -> Result<&str, Status> {
    metadata
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| Status::unauthenticated("missing `authorization: Bearer <clinician token>`"))
}

impl Alerts {
    pub fn new(pool: Pool, events: Arc<Notify>, stop: CancellationToken) -> Self {
        Self { pool, events, stop }
    }

    async fn client(&self) -> Result<deadpool_postgres::Client, Status> {
        self.pool.get().await.map_err(unavailable)
    }

    async fn clinician(&self, metadata: &MetadataMap) -> Result<Clinician, Status> {
        let token = bearer(metadata)?;
        let db = self.client().await?;
        Self::authenticate(&**db, token).await
    }

    async fn authenticate(db: &impl GenericClient, token: &str) -> Result<Clinician, Status> {
        clinicians::authenticate(db, token)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| Status::unauthenticated("unknown or revoked clinician token"))
    }

    /// The next events after `cursor` for the token's current teams, in commit order. The
    /// token is checked on every read, so a revoked clinician or a changed team membership
    /// takes effect on an open stream too.
    async fn next_events(
        &self,
        db: &impl GenericClient,
        token: &str,
        cursor: &(String, i64),
    ) -> Result<Vec<tokio_postgres::Row>, Status> {
        let who = Self::authenticate(db, token).await?;
        db.query(
            "SELECT id, kind, at, alert, xid::text FROM alert_events
             WHERE team_id = ANY($1) AND (xid, id) > ($2::text::xid8, $3) AND NOT suppressed
               AND xid < pg_snapshot_xmin(pg_current_snapshot())
             ORDER BY xid, id LIMIT $4",
            &[&who.teams, &cursor.0, &cursor.1, &CATCH_UP_PAGE],
        )
        .await
        .map_err(internal)
    }

    /// Locks an alert of one of the caller's teams; another team's alert is "not found", so
    /// its existence is not disclosed.
    async fn alert_for_update(
        tx: &impl GenericClient,
        who: &Clinician,
        id: Uuid,
    ) -> Result<Alert, Status> {
        let row = tx
            .query_opt(
                &format!(
                    "SELECT {} FROM alerts WHERE id = $1 AND team_id = ANY($2) FOR UPDATE",
                    store::COLUMNS
                ),
                &[&id, &who.teams],
            )
            .await
            .map_err(internal)?
            .ok_or_else(|| Status::not_found(format!("no alert {id} in your teams")))?;
        Ok(Alert::from_row(&row))
    }

    async fn patient_team(
        db: &impl GenericClient,
        who: &Clinician,
        patient: Uuid,
    ) -> Result<(), Status> {
        db.query_opt(
            "SELECT 1 FROM patients WHERE id = $1 AND team_id = ANY($2)",
            &[&patient, &who.teams],
        )
        .await
        .map_err(internal)?
        .map(|_| ())
        .ok_or_else(|| Status::not_found(format!("no patient {patient} in your teams")))
    }

    async fn thresholds(
        db: &impl GenericClient,
        patient: Uuid,
    ) -> Result<pb::PatientThresholds, Status> {
        let row = db
            .query_one(
                "SELECT t.thresholds, s.thresholds, s.set_by, s.set_at, s.reason
                 FROM patients p
                 LEFT JOIN team_alert_settings t ON t.team_id = p.team_id
                 LEFT JOIN patient_alert_settings s ON s.patient_id = p.id
                 WHERE p.id = $1",
                &[&patient],
            )
            .await
            .map_err(internal)?;
        let team: Option<Value> = row.get(0);
        let own: Option<Value> = row.get(1);
        let layers: Vec<&Value> = [team.as_ref(), own.as_ref()]
            .into_iter()
            .flatten()
            .collect();
        let resolved = Thresholds::resolve(layers).map_err(internal)?;
        Ok(pb::PatientThresholds {
            patient_id: patient.to_string(),
            thresholds_json: serde_json::to_string(&resolved).map_err(internal)?,
            override_json: own.unwrap_or_else(|| json!({})).to_string(),
            set_by: row.get::<_, Option<String>>(2).unwrap_or_default(),
            set_at: row
                .get::<_, Option<OffsetDateTime>>(3)
                .and_then(|t| t.format(&Rfc3339).ok())
                .unwrap_or_default(),
            reason: row.get::<_, Option<String>>(4).unwrap_or_default(),
        })
    }

    async fn change(
        &self,
        metadata: &MetadataMap,
        alert_id: &str,
        note: String,
        apply: impl FnOnce(&mut Alert, &Clinician, OffsetDateTime) -> EventKind,
        action: &str,
    ) -> Result<pb::Alert, Status> {
        let who = self.clinician(metadata).await?;
        let id = parse_id(alert_id, "alert_id")?;
        let mut db = self.client().await?;
        let tx = db.transaction().await.map_err(unavailable)?;
        let mut alert = Self::alert_for_update(&*tx, &who, id).await?;
        if alert.state == State::Resolved {
            return Err(Status::failed_precondition("the alert is already resolved"));
        }
        let now = OffsetDateTime::now_utc();
        let kind = apply(&mut alert, &who, now);
        alert.updated_at = now;
        store::save(&*tx, &mut alert, kind, false)
            .await
            .map_err(internal)?;
        audit(
            &*tx,
            &who,
            action,
            Some(alert.patient_id),
            Some(alert.id),
            json!({ "note": note }),
        )
        .await?;
        tx.commit().await.map_err(unavailable)?;
        Ok(pb::Alert::from(&alert))
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::AlertEvent, Status>> + Send>>;

#[tonic::async_trait]
impl AlertService for Alerts {
    async fn list_alerts(
        &self,
        request: Request<pb::ListAlertsRequest>,
    ) -> Result<Response<pb::ListAlertsResponse>, Status> {
        let who = self.clinician(request.metadata()).await?;
        let r = request.into_inner();
        let page_size = i64::from(if r.page_size <= 0 {
            50
        } else {
            r.page_size.min(500)
        });
        let offset: i64 = if r.page_token.is_empty() {
            0
        } else {
            r.page_token.parse().map_err(|_| {
                Status::invalid_argument("`page_token` is not one this server issued")
            })?
        };
        let patient = (!r.patient_id.is_empty())
            .then(|| parse_id(&r.patient_id, "patient_id"))
            .transpose()?;
        let team = (!r.team_id.is_empty())
            .then(|| parse_id(&r.team_id, "team_id"))
            .transpose()?;
        let db = self.client().await?;
        let rows = db
            .query(
                &format!(
                    "SELECT {} FROM alerts
                     WHERE team_id = ANY($1)
                       AND (cardinality($2::text[]) = 0 OR state = ANY($2))
                       AND (cardinality($3::text[]) = 0 OR severity = ANY($3))
                       AND ($4::uuid IS NULL OR patient_id = $4)
                       AND ($5::uuid IS NULL OR team_id = $5)
                     ORDER BY opened_at DESC, id
                     LIMIT $6 OFFSET $7",
                    store::COLUMNS
                ),
                &[
                    &who.teams,
                    &r.states,
                    &r.severities,
                    &patient,
                    &team,
                    &(page_size + 1),
                    &offset,
                ],
            )
            .await
            .map_err(internal)?;
        let more = rows.len() as i64 > page_size;
        let alerts: Vec<pb::Alert> = rows
            .iter()
            .take(page_size as usize)
            .map(|row| pb::Alert::from(&Alert::from_row(row)))
            .collect();
        audit(
            &**db,
            &who,
            "list_alerts",
            patient,
            None,
            json!({ "returned": alerts.len() }),
        )
        .await?;
        Ok(Response::new(pb::ListAlertsResponse {
            alerts,
            next_page_token: if more {
                (offset + page_size).to_string()
            } else {
                String::new()
            },
        }))
    }

    type WatchAlertsStream = EventStream;

    async fn watch_alerts(
        &self,
        request: Request<pb::WatchAlertsRequest>,
    ) -> Result<Response<Self::WatchAlertsStream>, Status> {
        let token = bearer(request.metadata())?.to_string();
        let who = self.clinician(request.metadata()).await?;
        let after = request.into_inner().after_event_id;
        let db = self.client().await?;
        // The position is (transaction, id): see migration 5. Without a cursor, start with
        // the transactions still running now.
        let start = match after {
            Some(id) => db
                .query_opt(
                    "SELECT xid::text, id FROM alert_events WHERE id = $1",
                    &[&id],
                )
                .await
                .map_err(internal)?
                .ok_or_else(|| Status::invalid_argument(format!("unknown event id {id}")))?,
            None => db
                .query_one(
                    "SELECT pg_snapshot_xmin(pg_current_snapshot())::text, 0::int8",
                    &[],
                )
                .await
                .map_err(internal)?,
        };
        let mut cursor: (String, i64) = (start.get(0), start.get(1));
        audit(
            &**db,
            &who,
            "watch_alerts",
            None,
            None,
            json!({ "after_event_id": after }),
        )
        .await?;
        drop(db);
        let (tx, rx) = mpsc::channel(64);
        let service = self.clone();
        tokio::spawn(async move {
            loop {
                // Registered before the query, so a notification between the query and the
                // wait is not missed.
                let notified = service.events.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let rows = match service.client().await {
                    Ok(db) => service.next_events(&**db, &token, &cursor).await,
                    Err(status) => Err(status),
                };
                let rows = match rows {
                    Ok(rows) => rows,
                    Err(status) if status.code() == Code::Unavailable => {
                        tokio::time::sleep(RECHECK).await;
                        continue;
                    }
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                };
                let full = rows.len() as i64 == CATCH_UP_PAGE;
                for row in rows {
                    cursor = (row.get(4), row.get(0));
                    let at: OffsetDateTime = row.get(2);
                    let alert: Value = row.get(3);
                    let event = pb::AlertEvent {
                        event_id: cursor.1,
                        kind: row.get(1),
                        at: at.format(&Rfc3339).unwrap_or_default(),
                        alert: Some(convert::from_snapshot(&alert)),
                    };
                    if tx.send(Ok(event)).await.is_err() {
                        return;
                    }
                }
                if full {
                    continue;
                }
                tokio::select! {
                    _ = service.stop.cancelled() => return,
                    _ = tx.closed() => return,
                    _ = &mut notified => {}
                    _ = tokio::time::sleep(RECHECK) => {}
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn acknowledge_alert(
        &self,
        request: Request<pb::AcknowledgeAlertRequest>,
    ) -> Result<Response<pb::Alert>, Status> {
        let (metadata, _, r) = request.into_parts();
        let note = r.note.clone();
        let alert = self
            .change(
                &metadata,
                &r.alert_id,
                note.clone(),
                move |a, who, now| {
                    a.acknowledged_at = Some(now);
                    a.acknowledged_by = Some(who.id);
                    a.acknowledge_note = (!note.is_empty()).then_some(note);
                    // A red alert whose condition has already cleared was kept open only to be
                    // seen; once acknowledged it is done.
                    if a.condition_cleared_at.is_some() {
                        a.resolve(
                            Some(who.id),
                            now,
                            "acknowledged after the condition cleared".into(),
                        );
                        return EventKind::Resolved;
                    }
                    a.state = State::Acknowledged;
                    EventKind::Acknowledged
                },
                "acknowledge_alert",
            )
            .await?;
        Ok(Response::new(alert))
    }

    async fn resolve_alert(
        &self,
        request: Request<pb::ResolveAlertRequest>,
    ) -> Result<Response<pb::Alert>, Status> {
        let (metadata, _, r) = request.into_parts();
        let note = r.note.clone();
        let alert = self
            .change(
                &metadata,
                &r.alert_id,
                note.clone(),
                move |a, who, now| {
                    let resolution = if note.is_empty() {
                        "resolved by a clinician".into()
                    } else {
                        format!("resolved by a clinician: {note}")
                    };
                    a.resolve(Some(who.id), now, resolution);
                    EventKind::Resolved
                },
                "resolve_alert",
            )
            .await?;
        Ok(Response::new(alert))
    }

    async fn get_patient_thresholds(
        &self,
        request: Request<pb::GetPatientThresholdsRequest>,
    ) -> Result<Response<pb::PatientThresholds>, Status> {
        let who = self.clinician(request.metadata()).await?;
        let patient = parse_id(&request.get_ref().patient_id, "patient_id")?;
        let db = self.client().await?;
        Self::patient_team(&**db, &who, patient).await?;
        let thresholds = Self::thresholds(&**db, patient).await?;
        audit(
            &**db,
            &who,
            "get_patient_thresholds",
            Some(patient),
            None,
            json!({}),
        )
        .await?;
        Ok(Response::new(thresholds))
    }

    async fn set_patient_thresholds(
        &self,
        request: Request<pb::SetPatientThresholdsRequest>,
    ) -> Result<Response<pb::PatientThresholds>, Status> {
        let who = self.clinician(request.metadata()).await?;
        let r = request.into_inner();
        let patient = parse_id(&r.patient_id, "patient_id")?;
        if r.reason.trim().is_empty() {
            return Err(Status::invalid_argument(
                "`reason` is required: say why this patient differs",
            ));
        }
        let value: Value = serde_json::from_str(&r.override_json)
            .map_err(|e| Status::invalid_argument(format!("`override_json` is not JSON: {e}")))?;
        Thresholds::check_override(&value).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let mut db = self.client().await?;
        let tx = db.transaction().await.map_err(unavailable)?;
        Self::patient_team(&*tx, &who, patient).await?;
        tx.execute(
            "INSERT INTO patient_alert_settings (patient_id, thresholds, set_by, set_at, reason)
             VALUES ($1, $2, $3, now(), $4)
             ON CONFLICT (patient_id) DO UPDATE
             SET thresholds = EXCLUDED.thresholds, set_by = EXCLUDED.set_by,
                 set_at = EXCLUDED.set_at, reason = EXCLUDED.reason",
            &[
                &patient,
                &value,
                &format!("clinician:{}", who.id),
                &r.reason,
            ],
        )
        .await
        .map_err(internal)?;
        audit(
            &*tx,
            &who,
            "set_patient_thresholds",
            Some(patient),
            None,
            json!({ "override": value, "reason": r.reason }),
        )
        .await?;
        let thresholds = Self::thresholds(&*tx, patient).await?;
        tx.commit().await.map_err(unavailable)?;
        Ok(Response::new(thresholds))
    }
}
