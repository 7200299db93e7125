//! Wakes whoever waits for changes: a dedicated connection LISTENs on the channel a trigger
//! NOTIFYs (`vigil_alert_events` for alert events). Waiters still re-check on a timer, so a
//! lost connection delays them but never loses a change.

use std::{sync::Arc, time::Duration};

use futures_util::{StreamExt, stream};
use tokio::sync::Notify;
use tokio_postgres::{AsyncMessage, NoTls};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

pub const CHANNEL: &str = "vigil_alert_events";

pub async fn listen(
    config: tokio_postgres::Config,
    channel: &'static str,
    notify: Arc<Notify>,
    token: CancellationToken,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        match config.connect(NoTls).await {
            Ok((client, mut connection)) => {
                backoff = Duration::from_millis(200);
                let mut messages = stream::poll_fn(move |cx| connection.poll_message(cx));
                let statement = format!("LISTEN {channel}");
                let subscribe = client.batch_execute(&statement);
                tokio::pin!(subscribe);
                let mut subscribed = false;
                loop {
                    tokio::select! {
                        _ = token.cancelled() => return,
                        result = &mut subscribe, if !subscribed => {
                            if let Err(e) = result {
                                warn!(error = %e, channel, "LISTEN failed");
                                break;
                            }
                            subscribed = true;
                            // Anything committed while we were not listening.
                            notify.notify_waiters();
                        }
                        message = messages.next() => match message {
                            Some(Ok(AsyncMessage::Notification(_))) => notify.notify_waiters(),
                            Some(Ok(_)) => {}
                            Some(Err(e)) => {
                                warn!(error = %e, channel, "notification listener connection failed");
                                break;
                            }
                            None => break,
                        },
                    }
                }
            }
            Err(e) => debug!(error = %e, channel, "notification listener cannot connect"),
        }
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
