//! Registers a simulated cohort through the registry functions `vigil admin` uses, so the
//! simulator exercises the same paths as a real enrolment.

use anyhow::Context as _;
use serde::Serialize;
use time::OffsetDateTime;
use tokio_postgres::Client;
use uuid::Uuid;
use vigil_ingest::{
    domain::RawReading,
    store::{StoreError, admin},
};

use super::{model::Profile, send::Credentials};

/// A simulated patient as registered: its model and its devices' credentials, in the
/// order of `profile.devices`.
pub struct Enrolled {
    pub profile: Profile,
    pub patient_id: Uuid,
    pub devices: Vec<Credentials>,
}

#[derive(Debug, Serialize)]
pub struct Summary {
    pub team_id: Uuid,
    pub team: String,
    pub patients: usize,
    pub devices: usize,
}

/// Finds or creates `team`, then registers every profile as a new patient with its devices
/// bound from `since` (so backfilled readings are attributed to it).
pub async fn enrol(
    client: &mut Client,
    team: &str,
    profiles: Vec<Profile>,
    since: OffsetDateTime,
) -> anyhow::Result<(Summary, Vec<Enrolled>)> {
    let team_id = match admin::find_team(client, team).await {
        Ok(id) => id,
        Err(StoreError::NotFound(_)) => admin::add_team(client, team).await?,
        Err(e) => return Err(e).context("looking up the care team"),
    };
    let mut enrolled = Vec::with_capacity(profiles.len());
    for profile in profiles {
        let (patient_id, _) = admin::add_patient(
            client,
            &team_id.to_string(),
            None,
            Some(profile.date_of_birth),
        )
        .await
        .context("registering a simulated patient")?;
        let mut devices = Vec::with_capacity(profile.devices.len());
        for device in &profile.devices {
            let new = admin::add_device(
                client,
                Uuid::new_v4(),
                patient_id,
                device.kind.as_str(),
                Some("vigil-simulator"),
                since,
            )
            .await
            .context("registering a simulated device")?;
            devices.push(Credentials {
                device_id: new.id,
                token: new.token,
            });
        }
        enrolled.push(Enrolled {
            profile,
            patient_id,
            devices,
        });
    }
    let summary = Summary {
        team_id,
        team: team.to_string(),
        patients: enrolled.len(),
        devices: enrolled.iter().map(|e| e.devices.len()).sum(),
    };
    Ok((summary, enrolled))
}

impl Enrolled {
    /// This patient's readings in `[from, to)`, grouped by device (indexes into `devices`),
    /// in the wire form a device sends.
    pub fn readings(
        &self,
        seed: u64,
        from: OffsetDateTime,
        to: OffsetDateTime,
    ) -> anyhow::Result<Vec<Vec<RawReading>>> {
        let mut by_device = vec![Vec::new(); self.devices.len()];
        for reading in self.profile.readings(seed, from, to) {
            let raw: RawReading = serde_json::from_value(reading.to_json(&self.profile))
                .context("simulated reading does not match the wire format")?;
            by_device[reading.device].push(raw);
        }
        Ok(by_device)
    }
}
