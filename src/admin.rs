//! `vigil admin …`: registry and quarantine commands. Human-readable output by default,
//! JSON with `--json`.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde_json::json;
use time::{Date, OffsetDateTime, format_description::well_known::Rfc3339};
use uuid::Uuid;
use vigil_alerts::{admin as alert_admin, clinicians, consent::Change, secrets};
use vigil_ingest::{
    Settings,
    broker::accounts::{self, Role as BrokerRole},
    domain::nhs::NhsNumber,
    replay,
    store::{self, admin, consent, quarantine, team_role},
};

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Care teams.
    Team {
        #[command(subcommand)]
        command: TeamCommand,
    },
    /// Patients.
    Patient {
        #[command(subcommand)]
        command: PatientCommand,
    },
    /// Devices, their tokens and patient bindings.
    Device {
        #[command(subcommand)]
        command: DeviceCommand,
    },
    /// Clinicians and their care teams.
    Clinician {
        #[command(subcommand)]
        command: ClinicianCommand,
    },
    /// Team webhooks that receive alert changes.
    Webhook {
        #[command(subcommand)]
        command: WebhookCommand,
    },
    /// Refused readings and messages.
    Quarantine {
        #[command(subcommand)]
        command: QuarantineCommand,
    },
    /// MQTT broker identities of the services and of care teams' alert consumers (devices
    /// log in with their own id and token). `vigil broker-sync` applies changes.
    BrokerAccount {
        #[command(subcommand)]
        command: BrokerAccountCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum BrokerAccountCommand {
    /// Create an account, or replace an existing one's role and password (reinstating it).
    /// Prints a generated password once unless --password-file gives one.
    Put {
        #[arg(long)]
        username: String,
        /// ingest (reads readings, writes results), alerts (writes team alert topics) or
        /// team (reads one team's alerts; needs --team).
        #[arg(long)]
        role: BrokerRole,
        /// Care team id or name, for a team account.
        #[arg(long)]
        team: Option<String>,
        /// Read the password from this file (its first line) instead of generating one.
        #[arg(long)]
        password_file: Option<PathBuf>,
    },
    /// Withdraw an account: the broker refuses it and drops its connections.
    Revoke {
        #[arg(long)]
        username: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum TeamCommand {
    /// Create a care team.
    Add {
        #[arg(long)]
        name: String,
    },
    /// Set the team's alert thresholds (a JSON object of the settings to change; see
    /// docs/alerts.md). Replaces the team's previous settings.
    Thresholds {
        /// Care team id or name.
        #[arg(long)]
        team: String,
        #[arg(long)]
        set: String,
        /// Who decided it (recorded with the settings).
        #[arg(long)]
        by: String,
        #[arg(long)]
        reason: String,
    },
    /// Create the database role the team's Grafana data source logs in as: it reads that
    /// team's patients, readings, rollups and alerts and nothing else. Prints the password
    /// once. Run again to set a new password.
    GrafanaRole {
        /// Care team id or name.
        #[arg(long)]
        team: String,
        /// Role name; default: the database's name, `_team_` and the start of the team id.
        /// Roles are shared by every database on the server.
        #[arg(long)]
        role: Option<String>,
        /// Read the password from this file (first line) instead of generating one.
        #[arg(long)]
        password_file: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ClinicianCommand {
    /// Register a clinician in one or more care teams. Prints their token once.
    Add {
        #[arg(long)]
        name: String,
        /// Care team id or name; repeat for several teams.
        #[arg(long = "team", required = true)]
        teams: Vec<String>,
        /// When the token stops working (RFC 3339); default: never.
        #[arg(long)]
        token_expires: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum WebhookCommand {
    /// Send a team's alert changes to a URL (HMAC-SHA256 signed). Prints the secret once.
    Add {
        /// Care team id or name.
        #[arg(long)]
        team: String,
        #[arg(long)]
        url: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum PatientCommand {
    /// Enrol a patient in a care team. Prints the patient's pseudonymous id.
    Add {
        /// Care team id or name.
        #[arg(long)]
        team: String,
        /// NHS number (validated with its check digit; stored, never logged).
        #[arg(long)]
        nhs_number: Option<String>,
        /// Date of birth, YYYY-MM-DD (blood-pressure targets depend on age).
        #[arg(long)]
        date_of_birth: Option<String>,
    },
    /// Pause monitoring until a time: readings are still stored, alerts are recorded but
    /// suppressed (not pushed, not escalated), missing data raises nothing. Ends by itself.
    Pause {
        #[arg(long)]
        patient: Uuid,
        /// When monitoring resumes: RFC 3339, or a date (YYYY-MM-DD, meaning 00:00 UTC).
        #[arg(long)]
        until: String,
        /// Who decided it: a named person (recorded and audited).
        #[arg(long)]
        by: String,
        /// Why (recorded and audited; erased with the patient).
        #[arg(long)]
        reason: String,
    },
    /// End a pause now.
    Resume {
        #[arg(long)]
        patient: Uuid,
        /// Who decided it: a named person (recorded and audited).
        #[arg(long)]
        by: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Withdraw the patient from monitoring: their readings are refused and not kept, their
    /// open alerts are closed. Lasts until `reenrol`.
    Withdraw {
        #[arg(long)]
        patient: Uuid,
        /// Who decided it: a named person (recorded and audited).
        #[arg(long)]
        by: String,
        /// Why (recorded and audited; erased with the patient).
        #[arg(long)]
        reason: String,
    },
    /// Start monitoring a withdrawn patient again (with their renewed consent).
    Reenrol {
        #[arg(long)]
        patient: Uuid,
        /// Who decided it: a named person (recorded and audited).
        #[arg(long)]
        by: String,
        /// Why, e.g. where the renewed consent is recorded.
        #[arg(long)]
        reason: String,
    },
    /// Show the patient's consent to monitoring and every change to it.
    Show {
        #[arg(long)]
        patient: Uuid,
    },
    /// Remove all of a patient's health data (readings, rollups, alerts, quarantine,
    /// thresholds, consent history, bindings, the patient record); revoke their current
    /// devices. Irreversible.
    Erase {
        #[arg(long)]
        patient: Uuid,
        /// Who asked for it (recorded with the erasure).
        #[arg(long)]
        by: String,
        /// Why, without health data (e.g. "patient request 2026-11-22, ref 1234").
        #[arg(long)]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// Register a device for a patient. Prints its id and its token, once.
    Add {
        #[arg(long)]
        patient: Uuid,
        /// Use this device id (e.g. one the device already publishes under) instead of a new one.
        #[arg(long)]
        id: Option<Uuid>,
        /// bp_monitor, glucose_meter, cgm, ketone_meter, scale, heart_rate_monitor or health_app.
        #[arg(long)]
        kind: String,
        #[arg(long)]
        model: Option<String>,
        /// Start of the binding (RFC 3339). Defaults to now; set it earlier to accept readings
        /// the device stored before it was registered.
        #[arg(long)]
        from: Option<String>,
        /// When the token stops working (RFC 3339); default: never.
        #[arg(long)]
        token_expires: Option<String>,
    },
    /// Issue a device a new token; the old one stops working at once. Prints it once.
    RotateToken {
        #[arg(long)]
        device: Uuid,
        /// When the new token stops working (RFC 3339); default: never.
        #[arg(long)]
        token_expires: Option<String>,
    },
    /// Re-issue a device to another patient from a point in time on.
    Rebind {
        #[arg(long)]
        device: Uuid,
        #[arg(long)]
        patient: Uuid,
        /// When the device changed hands (RFC 3339); defaults to now.
        #[arg(long)]
        at: Option<String>,
    },
    /// Revoke a device: its token stops working and its readings are refused.
    Revoke {
        #[arg(long)]
        device: Uuid,
    },
}

#[derive(Debug, Subcommand)]
pub enum QuarantineCommand {
    /// List quarantined entries not yet replayed.
    List(QuarantineFilter),
    /// Run quarantined entries through ingest again (e.g. after registering their device).
    Replay(QuarantineFilter),
}

#[derive(Debug, Args)]
pub struct QuarantineFilter {
    /// Only these entry ids.
    #[arg(long = "id")]
    ids: Vec<i64>,
    /// Only entries with this reason code, e.g. unknown_device.
    #[arg(long)]
    reason: Option<String>,
    #[arg(long)]
    device: Option<Uuid>,
    /// Include entries already replayed.
    #[arg(long)]
    all: bool,
    #[arg(long, default_value_t = 100)]
    limit: i64,
}

impl From<&QuarantineFilter> for quarantine::Filter {
    fn from(f: &QuarantineFilter) -> Self {
        Self {
            ids: f.ids.clone(),
            reason: f.reason.clone(),
            device_id: f.device,
            include_replayed: f.all,
            limit: f.limit,
        }
    }
}

/// The first line of `path`, without its line ending.
fn read_password(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--password-file {}", path.display()))?;
    Ok(text.lines().next().unwrap_or("").to_string())
}

fn optional_timestamp(value: Option<&str>, flag: &str) -> anyhow::Result<Option<OffsetDateTime>> {
    value.map(|v| timestamp(Some(v), flag)).transpose()
}

fn rfc3339(t: Option<OffsetDateTime>) -> Option<String> {
    t.and_then(|t| t.format(&Rfc3339).ok())
}

/// An RFC 3339 timestamp, or a date meaning 00:00 UTC that day.
fn instant(value: &str, flag: &str) -> anyhow::Result<OffsetDateTime> {
    OffsetDateTime::parse(value, &Rfc3339)
        .or_else(|_| {
            Date::parse(
                value,
                time::macros::format_description!("[year]-[month]-[day]"),
            )
            .map(|d| d.midnight().assume_utc())
        })
        .with_context(|| format!("--{flag} {value:?} is neither RFC 3339 nor YYYY-MM-DD"))
}

fn timestamp(value: Option<&str>, flag: &str) -> anyhow::Result<OffsetDateTime> {
    match value {
        None => Ok(OffsetDateTime::now_utc()),
        Some(v) => OffsetDateTime::parse(v, &Rfc3339)
            .with_context(|| format!("--{flag} {v:?} is not an RFC 3339 timestamp")),
    }
}

pub async fn run(settings: &Settings, command: AdminCommand, json: bool) -> anyhow::Result<()> {
    let pool = store::pool::build(&settings.database)?;
    let mut client = pool.get().await.context("connecting to the database")?;
    let out = match command {
        AdminCommand::Team {
            command: TeamCommand::Add { name },
        } => {
            let id = admin::add_team(&mut client, &name).await?;
            Output::new(json!({ "team_id": id, "name": name }), format!("team {id}"))
        }
        AdminCommand::Team {
            command:
                TeamCommand::Thresholds {
                    team,
                    set,
                    by,
                    reason,
                },
        } => {
            let team_id = admin::find_team(&client, &team).await?;
            let value: serde_json::Value =
                serde_json::from_str(&set).context("--set must be a JSON object")?;
            let resolved =
                alert_admin::set_team_thresholds(&**client, team_id, &value, &by, &reason).await?;
            Output::new(
                json!({ "team_id": team_id, "thresholds": resolved }),
                format!("team {team_id} thresholds set"),
            )
        }
        AdminCommand::Team {
            command:
                TeamCommand::GrafanaRole {
                    team,
                    role,
                    password_file,
                },
        } => {
            let (password, shown) = match password_file {
                Some(path) => (read_password(&path)?, None),
                None => {
                    let generated = team_role::new_password();
                    (generated.clone(), Some(generated))
                }
            };
            let granted =
                team_role::grant_team_role(&mut client, &team, role.as_deref(), &password).await?;
            let what = if granted.created {
                "created"
            } else {
                "given a new password"
            };
            let mut text = format!(
                "role {} {what}; it reads team {}",
                granted.role, granted.team_id
            );
            if let Some(p) = &shown {
                text.push_str(&format!(
                    "\npassword  {p}\n(the password is shown only now)"
                ));
            }
            Output::new(
                json!({ "team_id": granted.team_id, "role": granted.role,
                        "created": granted.created, "password": shown }),
                text,
            )
        }
        AdminCommand::Clinician {
            command:
                ClinicianCommand::Add {
                    name,
                    teams,
                    token_expires,
                },
        } => {
            let expires = optional_timestamp(token_expires.as_deref(), "token-expires")?;
            let mut ids = Vec::new();
            for team in &teams {
                ids.push(admin::find_team(&client, team).await?);
            }
            let tx = client.transaction().await?;
            let clinician = clinicians::add(&*tx, &name, &ids).await?;
            clinicians::set_token_expiry(&*tx, clinician.id, expires).await?;
            alert_admin::audit_clinician_added(&*tx, clinician.id, &ids).await?;
            tx.commit().await?;
            Output::new(
                json!({ "clinician_id": clinician.id, "token": clinician.token, "teams": ids }),
                format!(
                    "clinician {}\ntoken     {}\n(the token is shown only now)",
                    clinician.id, clinician.token
                ),
            )
        }
        AdminCommand::Webhook {
            command: WebhookCommand::Add { team, url },
        } => {
            let team_id = admin::find_team(&client, &team).await?;
            let hook = alert_admin::add_webhook(&**client, team_id, &url).await?;
            Output::new(
                json!({ "webhook_id": hook.id, "team_id": team_id, "secret": hook.secret }),
                format!(
                    "webhook {}\nsecret  {}\n(the signing secret is shown only now)",
                    hook.id, hook.secret
                ),
            )
        }
        AdminCommand::Patient {
            command:
                PatientCommand::Add {
                    team,
                    nhs_number,
                    date_of_birth,
                },
        } => {
            let nhs = nhs_number
                .as_deref()
                .map(NhsNumber::parse)
                .transpose()
                .context("--nhs-number")?;
            let dob = date_of_birth
                .as_deref()
                .map(|d| {
                    Date::parse(d, time::macros::format_description!("[year]-[month]-[day]"))
                        .with_context(|| format!("--date-of-birth {d:?} is not YYYY-MM-DD"))
                })
                .transpose()?;
            let (id, team_id) = admin::add_patient(&mut client, &team, nhs.as_ref(), dob).await?;
            Output::new(
                json!({ "patient_id": id, "team_id": team_id }),
                format!("patient {id}"),
            )
        }
        AdminCommand::Patient {
            command: PatientCommand::Show { patient },
        } => {
            let report = consent::report(&client, patient).await?;
            let mut text = format!(
                "patient {patient}: {} since {}",
                report.state,
                report.since.format(&Rfc3339)?
            );
            if let Some(until) = report.paused_until {
                text.push_str(&format!(", until {}", until.format(&Rfc3339)?));
            }
            for h in &report.history {
                text.push_str(&format!(
                    "\n  {} {} → {} by {}{}{}",
                    h.at.format(&Rfc3339)?,
                    h.from,
                    h.to,
                    h.by,
                    rfc3339(h.paused_until)
                        .map(|u| format!(" until {u}"))
                        .unwrap_or_default(),
                    h.reason
                        .as_deref()
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default(),
                ));
            }
            Output::new(serde_json::to_value(&report)?, text)
        }
        AdminCommand::Patient {
            command:
                PatientCommand::Pause {
                    patient,
                    until,
                    by,
                    reason,
                },
        } => {
            let until = instant(&until, "until")?;
            let change = Change::Pause { until };
            consent_change(&mut client, patient, change, &by, Some(&reason)).await?
        }
        AdminCommand::Patient {
            command:
                PatientCommand::Resume {
                    patient,
                    by,
                    reason,
                },
        } => consent_change(&mut client, patient, Change::Resume, &by, reason.as_deref()).await?,
        AdminCommand::Patient {
            command:
                PatientCommand::Withdraw {
                    patient,
                    by,
                    reason,
                },
        } => consent_change(&mut client, patient, Change::Withdraw, &by, Some(&reason)).await?,
        AdminCommand::Patient {
            command:
                PatientCommand::Reenrol {
                    patient,
                    by,
                    reason,
                },
        } => consent_change(&mut client, patient, Change::Reenrol, &by, Some(&reason)).await?,
        AdminCommand::Patient {
            command:
                PatientCommand::Erase {
                    patient,
                    by,
                    reason,
                },
        } => {
            let erased = admin::erase_patient(&mut client, patient, &by, &reason).await?;
            Output::new(
                json!({ "patient_id": patient, "erased": erased }),
                format!(
                    "patient {patient} erased: {} readings, {} alerts, {} quarantined entries, \
                     {} rollup rows, {} consent changes; {} audit entries redacted",
                    erased.readings,
                    erased.alerts,
                    erased.quarantined,
                    erased.rollup_rows,
                    erased.consent_changes,
                    erased.audit_rows_redacted
                ),
            )
        }
        AdminCommand::Device { command } => device(&mut client, command).await?,
        AdminCommand::BrokerAccount { command } => broker_account(&mut client, command).await?,
        AdminCommand::Quarantine {
            command: QuarantineCommand::List(filter),
        } => {
            let entries = quarantine::list(&client, &(&filter).into()).await?;
            let text = entries
                .iter()
                .map(|e| {
                    format!(
                        "#{} {} {} device={} reason={}: {}\n    {}",
                        e.id,
                        e.received_at.format(&Rfc3339).unwrap_or_default(),
                        e.channel,
                        e.device_id
                            .map(|d| d.to_string())
                            .unwrap_or_else(|| "-".into()),
                        e.reason,
                        e.message,
                        e.payload,
                    )
                })
                .collect::<Vec<_>>()
                .join("\n");
            let text = if text.is_empty() {
                "quarantine is empty".to_string()
            } else {
                text
            };
            Output::new(serde_json::to_value(&entries)?, text)
        }
        AdminCommand::Quarantine {
            command: QuarantineCommand::Replay(filter),
        } => {
            let report = replay::replay(&pool, settings, &(&filter).into()).await?;
            let text = report
                .iter()
                .map(|r| format!("#{} {}", r.id, r.outcome))
                .collect::<Vec<_>>()
                .join("\n");
            let text = if text.is_empty() {
                "nothing to replay".to_string()
            } else {
                text
            };
            Output::new(serde_json::to_value(&report)?, text)
        }
    };
    out.print(json)
}

async fn consent_change(
    client: &mut tokio_postgres::Client,
    patient: Uuid,
    change: Change,
    by: &str,
    reason: Option<&str>,
) -> anyhow::Result<Output> {
    let changed = consent::change(client, patient, change, by, reason).await?;
    let mut text = format!(
        "patient {patient}: monitoring {} → {}",
        changed.from, changed.to
    );
    if let Some(until) = changed.paused_until {
        text.push_str(&format!(" until {}", until.format(&Rfc3339)?));
    }
    if changed.alerts_closed > 0 {
        text.push_str(&format!("; {} open alerts closed", changed.alerts_closed));
    }
    Ok(Output::new(serde_json::to_value(&changed)?, text))
}

async fn device(
    client: &mut tokio_postgres::Client,
    command: DeviceCommand,
) -> anyhow::Result<Output> {
    Ok(match command {
        DeviceCommand::Add {
            patient,
            id,
            kind,
            model,
            from,
            token_expires,
        } => {
            let from = timestamp(from.as_deref(), "from")?;
            let expires = optional_timestamp(token_expires.as_deref(), "token-expires")?;
            let id = id.unwrap_or_else(Uuid::new_v4);
            let device =
                admin::add_device(client, id, patient, &kind, model.as_deref(), from).await?;
            if expires.is_some() {
                admin::set_device_token_expiry(client, device.id, expires).await?;
            }
            Output::new(
                json!({ "device_id": device.id, "token": device.token, "patient_id": patient,
                        "token_expires_at": rfc3339(expires) }),
                format!(
                    "device {}\ntoken  {}\n(the token is shown only now; store it on the device)",
                    device.id, device.token
                ),
            )
        }
        DeviceCommand::Rebind {
            device,
            patient,
            at,
        } => {
            let at = timestamp(at.as_deref(), "at")?;
            admin::rebind_device(client, device, patient, at).await?;
            let at = at.format(&Rfc3339)?;
            Output::new(
                json!({ "device_id": device, "patient_id": patient, "from": at }),
                format!("device {device} bound to patient {patient} from {at}"),
            )
        }
        DeviceCommand::RotateToken {
            device,
            token_expires,
        } => {
            let expires = optional_timestamp(token_expires.as_deref(), "token-expires")?;
            let token = admin::rotate_device_token(client, device, expires).await?;
            Output::new(
                json!({ "device_id": device, "token": token, "token_expires_at": rfc3339(expires) }),
                format!(
                    "device {device}\ntoken  {token}\n(the token is shown only now; the old one no longer works)"
                ),
            )
        }
        DeviceCommand::Revoke { device } => {
            let at = admin::revoke_device(client, device)
                .await?
                .format(&Rfc3339)?;
            Output::new(
                json!({ "device_id": device, "revoked_at": at }),
                format!("device {device} revoked at {at}"),
            )
        }
    })
}

async fn broker_account(
    client: &mut tokio_postgres::Client,
    command: BrokerAccountCommand,
) -> anyhow::Result<Output> {
    Ok(match command {
        BrokerAccountCommand::Put {
            username,
            role,
            team,
            password_file,
        } => {
            let team_id = match &team {
                Some(team) => Some(admin::find_team(client, team).await?),
                None => None,
            };
            let (password, shown) = match &password_file {
                Some(path) => {
                    let text = std::fs::read_to_string(path)
                        .with_context(|| format!("reading --password-file {}", path.display()))?;
                    (text.lines().next().unwrap_or("").trim().to_string(), None)
                }
                None => {
                    let generated = secrets::generate("vgm_");
                    (generated.clone(), Some(generated))
                }
            };
            accounts::put_account(client, &username, role, team_id, &password).await?;
            let mut text = format!("broker account {username} ({role})");
            if let Some(p) = &shown {
                text.push_str(&format!("\npassword {p}\n(the password is shown only now)"));
            }
            Output::new(
                json!({ "username": username, "role": role.as_str(), "team_id": team_id,
                        "password": shown }),
                text,
            )
        }
        BrokerAccountCommand::Revoke { username } => {
            accounts::revoke_account(client, &username).await?;
            Output::new(
                json!({ "username": username, "revoked": true }),
                format!("broker account {username} revoked"),
            )
        }
    })
}

struct Output {
    json: serde_json::Value,
    text: String,
}

impl Output {
    fn new(json: serde_json::Value, text: String) -> Self {
        Self { json, text }
    }

    fn print(&self, json: bool) -> anyhow::Result<()> {
        if json {
            println!("{}", serde_json::to_string_pretty(&self.json)?);
        } else {
            println!("{}", self.text);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    #[test]
    fn an_instant_is_rfc3339_or_a_date_at_midnight_utc() {
        assert_eq!(
            instant("2026-12-01T09:30:00+01:00", "until").expect("rfc3339"),
            datetime!(2026-12-01 08:30 UTC)
        );
        assert_eq!(
            instant("2026-12-01", "until").expect("date"),
            datetime!(2026-12-01 00:00 UTC)
        );
        let err = instant("1 Dec", "until").expect_err("refused");
        assert!(err.to_string().contains("--until \"1 Dec\""), "{err}");
    }
}
