//! Keeping a refresh loop running.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How long a supervisor waits before starting a refresh loop that ended again.
const RESTART_DELAY: Duration = Duration::from_secs(1);

/// Keeps a credential's refresh loop (`start()`) running until `stop`: a loop that ends
/// before that (a panic, or a return) is started again after [`RESTART_DELAY`] and
/// counted in `restarts`, so a credential is never left without a renewing task.
pub(super) async fn supervise<F, Fut>(name: String, stop: CancellationToken, restarts: prometheus::IntCounter, start: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        let ended = tokio::spawn(start()).await;
        if stop.is_cancelled() {
            return;
        }
        match ended {
            Err(e) if e.is_panic() => {
                tracing::error!(credential = %name, "the refresh loop panicked; starting it again")
            }
            _ => tracing::error!(credential = %name, "the refresh loop ended; starting it again"),
        }
        restarts.inc();
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(RESTART_DELAY) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn a_refresh_loop_that_ends_or_panics_is_started_again_and_counted() {
        let restarts = prometheus::IntCounter::new("r", "r").unwrap();
        let stop = CancellationToken::new();
        let runs = Arc::new(AtomicU32::new(0));
        let (r, s) = (runs.clone(), stop.clone());
        let supervisor = tokio::spawn(supervise("c".into(), stop.clone(), restarts.clone(), move || {
            let n = r.fetch_add(1, Ordering::SeqCst);
            let s = s.clone();
            async move {
                match n {
                    0 => panic!("first run panics"),
                    1 => {} // second run returns at once
                    _ => s.cancelled().await,
                }
            }
        }));
        while runs.load(Ordering::SeqCst) < 3 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(restarts.get(), 2);
        stop.cancel();
        supervisor.await.unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 3, "a stopped loop is not restarted");
    }
}
