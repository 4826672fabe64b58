//! The change-notice subscription: one task per store, subscribing again after a
//! failure or a failover, polling meanwhile.

use std::time::Duration;

use futures_util::StreamExt;
use prometheus::IntCounterVec;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::{describe, OP_TIMEOUT};
use crate::token::redis_link::Link;

/// The change notices of one subscription, as they arrive ("" after a cluster
/// connection subscribed again: anything may have changed meanwhile).
type Notices = std::pin::Pin<Box<dyn futures_util::Stream<Item = String> + Send>>;

/// Subscribes to `channel` where `link` points now: on one server or Sentinel's
/// master a pub/sub connection of its own; on a cluster a RESP3 connection whose
/// pushes arrive on a channel (the connection is kept in the stream).
async fn subscribe(link: &Link, channel: &str) -> redis::RedisResult<Notices> {
    if let Some(client) = link.pubsub_client().await? {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(channel).await?;
        return Ok(Box::pin(pubsub.into_on_message().filter_map(|m| async move { m.get_payload::<String>().ok() })));
    }
    let (push, pushes) = tokio::sync::mpsc::unbounded_channel();
    let Some(mut conn) = link.cluster_subscriber(push).await? else {
        return Err(redis::RedisError::from((redis::ErrorKind::Client, "no way to subscribe")));
    };
    conn.subscribe(channel).await?;
    // The connection lives as long as the stream: dropping it ends the subscription.
    let notices = futures_util::stream::unfold((pushes, conn), |(mut pushes, conn)| async move {
        loop {
            let p = pushes.recv().await?;
            let notice = match p.kind {
                redis::PushKind::Message => {
                    p.data.into_iter().nth(1).and_then(|v| redis::from_redis_value::<String>(v).ok())
                }
                redis::PushKind::Subscribe => Some(String::new()),
                _ => None,
            };
            if let Some(n) = notice {
                return Some((n, (pushes, conn)));
            }
        }
    });
    Ok(Box::pin(notices))
}

/// Subscribes to the change channel and forwards credential names, reconnecting with a
/// capped backoff, and subscribing again on the new master when operations move
/// (a failover); after each (re)subscribe it sends "" (anything may have changed).
pub(super) async fn subscribe_loop(
    link: std::sync::Arc<Link>,
    channel: String,
    location: String,
    tx: broadcast::Sender<String>,
    stop: CancellationToken,
    errors: Option<IntCounterVec>,
) {
    let mut failures: u32 = 0;
    let mut moves = link.moves();
    loop {
        moves.mark_unchanged();
        let outcome = tokio::select! {
            _ = stop.cancelled() => return,
            r = tokio::time::timeout(OP_TIMEOUT, subscribe(&link, &channel)) => r,
        };
        match outcome {
            Ok(Ok(mut notices)) => {
                if failures > 0 {
                    tracing::info!(redis = %location, "change notifications resumed");
                }
                failures = 0;
                let _ = tx.send(String::new()); // no receivers yet is fine
                let moved = loop {
                    let notice = tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = moves.changed() => break true,
                        n = notices.next() => n,
                    };
                    let Some(name) = notice else { break false };
                    let _ = tx.send(name);
                };
                if moved {
                    tracing::info!(redis = %location, "subscribing to change notifications where the store moved");
                    continue;
                }
                tracing::warn!(redis = %location, "change notifications interrupted; reconnecting");
                link.suspect().await;
            }
            Ok(Err(e)) => {
                note_failure(&location, &errors, &mut failures, &describe(&e));
                link.suspect().await;
            }
            Err(_) => note_failure(&location, &errors, &mut failures, "no answer in time"),
        }
        let pause = Duration::from_millis(100).saturating_mul(1 << failures.min(4)).min(Duration::from_secs(2));
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = moves.changed() => {}
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

fn note_failure(location: &str, errors: &Option<IntCounterVec>, failures: &mut u32, why: &str) {
    if let Some(c) = errors {
        c.with_label_values(&["subscribe"]).inc();
    }
    if *failures == 0 {
        tracing::warn!(redis = %location, error = %why, "cannot subscribe to change notifications; polling meanwhile");
    }
    *failures = failures.saturating_add(1);
}
