//! Delivery to the broker: retrying what an outage holds back, and the time the loop spends on
//! the Kafka side.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::EngineError;

/// Time spent on the Kafka side of the engine's loop.
#[derive(Debug, Default, Clone, Copy)]
pub struct IoTimes {
    /// Waiting for polls and copying their records.
    pub poll: Duration,
    /// Publishing decisions (until the broker acknowledged them) and appending results to
    /// their tables.
    pub publish: Duration,
    /// Committing input offsets after a close.
    pub commit: Duration,
}

/// Delivers with `f` until it succeeds: a broker outage holds results back (nothing is
/// committed past them) instead of stopping the engine. Gives up only when a stop is asked.
pub(super) async fn retry<'a, T, Fut>(
    what: &'static str,
    stop: &tokio::sync::watch::Receiver<bool>,
    failures: &std::sync::atomic::AtomicU64,
    mut f: impl FnMut() -> Fut,
) -> Result<T, EngineError>
where
    Fut: Future<Output = vigil_sinks::Result<T>> + 'a,
{
    let mut wait = Duration::from_millis(200);
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) => {
                failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, retry_in = ?wait, "{what} not delivered; holding them and retrying");
                let mut stop = stop.clone();
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.wait_for(|s| *s) => return Err(EngineError::StoppedUndelivered(what)),
                }
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
}
