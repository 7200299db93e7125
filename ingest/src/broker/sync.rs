//! `vigil broker-sync`: keeps Mosquitto's password and ACL files equal to the identities in
//! the database and makes the broker reload them (SIGHUP) when they change.
//!
//! It wakes on the `vigil_broker` notification (any change to devices or broker accounts),
//! when the next device token expires, and every `resync_secs` regardless, so a missed
//! notification or a hand-edited file is corrected within that interval.

use std::{
    fs, io,
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, bail};
use nix::{sys::signal, unistd::Pid};
use time::OffsetDateTime;
use tokio::sync::Notify;
use tokio_postgres::GenericClient;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use uuid::Uuid;

use super::files::{BrokerFiles, Identity, render};
use crate::{
    Settings,
    config::BrokerSyncSettings,
    store::{self, StoreError},
};

pub const CHANNEL: &str = "vigil_broker";

/// Bursts of changes (bulk enrolment) are written once.
const COALESCE: Duration = Duration::from_millis(200);
const RETRY: Duration = Duration::from_secs(5);

/// The identities the broker should admit now, and when the next device token expires
/// (the files must change then).
pub async fn identities(
    client: &impl GenericClient,
    topic_root: &str,
) -> Result<(Vec<Identity>, Option<OffsetDateTime>), StoreError> {
    let mut out = Vec::new();
    let mut next_expiry: Option<OffsetDateTime> = None;
    for row in client
        .query(
            "SELECT id, broker_password_hash, token_expires_at FROM devices
             WHERE revoked_at IS NULL AND broker_password_hash IS NOT NULL
               AND (token_expires_at IS NULL OR token_expires_at > now())",
            &[],
        )
        .await?
    {
        out.push(Identity::device(topic_root, row.get(0), row.get(1)));
        if let Some(expires) = row.get::<_, Option<OffsetDateTime>>(2) {
            next_expiry = Some(next_expiry.map_or(expires, |n| n.min(expires)));
        }
    }
    for row in client
        .query(
            "SELECT username, role, team_id, password_hash FROM broker_accounts
             WHERE revoked_at IS NULL",
            &[],
        )
        .await?
    {
        let (username, role, team, hash): (String, String, Option<Uuid>, String) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        out.push(match (role.as_str(), team) {
            ("ingest", _) => Identity::ingest(topic_root, username, hash),
            ("alerts", _) => Identity::alerts(topic_root, username, hash),
            (_, Some(team)) => Identity::team(topic_root, team, username, hash),
            (_, None) => continue,
        });
    }
    Ok((out, next_expiry))
}

/// Replaces `path` with `contents` unless it already holds them. The new file is complete
/// on disk before it takes the old one's name, so the broker never reads half a file.
fn replace_if_changed(path: &Path, contents: &str) -> io::Result<bool> {
    if fs::read(path).is_ok_and(|old| old == contents.as_bytes()) {
        return Ok(false);
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".new");
    let tmp = PathBuf::from(tmp);
    {
        // Group-readable: the broker may run as another account in the same group.
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o640)
            .open(&tmp)?;
        file.write_all(contents.as_bytes())?;
        file.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    Ok(true)
}

/// Writes both files; true when either changed.
pub fn write_files(files: &BrokerFiles, settings: &BrokerSyncSettings) -> anyhow::Result<bool> {
    let passwords = replace_if_changed(&settings.password_file, &files.passwords)
        .with_context(|| format!("writing {}", settings.password_file.display()))?;
    let acl = replace_if_changed(&settings.acl_file, &files.acl)
        .with_context(|| format!("writing {}", settings.acl_file.display()))?;
    Ok(passwords || acl)
}

/// Asks the broker whose pid is in `pid_file` to reload its configuration. False when the
/// file names no running process (the broker reads the new files when it starts).
pub fn reload(pid_file: &Path) -> anyhow::Result<bool> {
    let text = match fs::read_to_string(pid_file) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e).with_context(|| format!("reading {}", pid_file.display())),
    };
    let pid: i32 = text
        .trim()
        .parse()
        .with_context(|| format!("{} does not hold a process id", pid_file.display()))?;
    // A stale pid file may name an unrelated process by now; SIGHUP would end most.
    match fs::read_to_string(format!("/proc/{pid}/comm")) {
        Ok(name) if name.trim() != "mosquitto" => bail!(
            "{} names process {pid} ({}), not mosquitto; not signalling it",
            pid_file.display(),
            name.trim()
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        _ => {}
    }
    match signal::kill(Pid::from_raw(pid), signal::Signal::SIGHUP) {
        Ok(()) => Ok(true),
        Err(nix::errno::Errno::ESRCH) => Ok(false),
        Err(e) => Err(e).with_context(|| format!("signalling the broker (pid {pid})")),
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    pub identities: usize,
    pub changed: bool,
    pub reloaded: bool,
    pub next_expiry: Option<OffsetDateTime>,
}

/// One pass: read the identities, rewrite the files if they differ, reload the broker.
pub async fn sync_once(
    client: &impl GenericClient,
    topic_root: &str,
    settings: &BrokerSyncSettings,
) -> anyhow::Result<Outcome> {
    let (identities, next_expiry) = identities(client, topic_root).await?;
    let changed = write_files(&render(&identities), settings)?;
    let reloaded = match (&settings.pid_file, changed) {
        (Some(pid_file), true) => reload(pid_file)?,
        _ => false,
    };
    Ok(Outcome {
        identities: identities.len(),
        changed,
        reloaded,
        next_expiry,
    })
}

/// Runs until `shutdown`: a sync at start, then one after every change.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let pool = store::pool::build(&settings.database)?;
    let notify = Arc::new(Notify::new());
    let listener = tokio::spawn(vigil_alerts::events::listen(
        settings.database.url.parse().context("database.url")?,
        CHANNEL,
        notify.clone(),
        shutdown.clone(),
    ));
    let sync = &settings.broker_sync;
    let resync = Duration::from_secs(sync.resync_secs);
    info!(
        password_file = %sync.password_file.display(),
        acl_file = %sync.acl_file.display(),
        "keeping the broker's identities in step with the database"
    );
    while !shutdown.is_cancelled() {
        let woken = notify.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let result = match pool.get().await {
            Ok(client) => sync_once(&**client, &settings.mqtt.topic_root, sync).await,
            Err(e) => Err(anyhow::Error::from(e).context("connecting to the database")),
        };
        let wait = match result {
            Ok(outcome) => {
                if outcome.changed {
                    info!(
                        identities = outcome.identities,
                        reloaded = outcome.reloaded,
                        "broker identities updated"
                    );
                }
                until_expiry(outcome.next_expiry).map_or(resync, |d| d.min(resync))
            }
            Err(e) => {
                warn!(error = format!("{e:#}"), "broker sync failed; retrying");
                RETRY
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = &mut woken => tokio::time::sleep(COALESCE).await,
            _ = tokio::time::sleep(wait) => {}
        }
    }
    listener.await.context("notification listener")?;
    Ok(())
}

fn until_expiry(next: Option<OffsetDateTime>) -> Option<Duration> {
    let left = next? - OffsetDateTime::now_utc();
    // A little after the expiry, so the query already excludes the token.
    Some(Duration::try_from(left).unwrap_or_default() + Duration::from_millis(50))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pid_file(contents: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!(
            "vigil-pid-{}-{}",
            std::process::id(),
            contents.len()
        ));
        fs::write(&path, contents).expect("pid file");
        path
    }

    #[test]
    fn only_a_running_mosquitto_is_signalled() {
        // This test process is not mosquitto: refused, and it survives to say so.
        let own = pid_file(&std::process::id().to_string());
        let err = reload(&own).expect_err("not mosquitto").to_string();
        assert!(err.contains("not mosquitto"), "{err}");
        let _ = fs::remove_file(own);

        assert!(!reload(Path::new("/nonexistent/vigil.pid")).expect("no file"));
        let gone = pid_file("999999999");
        assert!(!reload(&gone).expect("no such process"));
        let _ = fs::remove_file(gone);
    }
}
