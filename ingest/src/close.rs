//! Closing Kafka clients within a bound.
//!
//! Dropping a consumer that belongs to a group makes it leave the group: librdkafka hands its
//! partitions back and the client polls until the group coordinator has answered, with no
//! limit. A coordinator that never answers (a broker gone for good, a group stuck between two
//! rebalances) would hold the dropping thread forever: a tokio worker, so the runtime's
//! shutdown after it, or a process on its way out. Every consumer Vigil owns is therefore
//! dropped through [`close_within`]: on a thread of its own, waited for up to a bound, then
//! left to finish in the background. Nothing depends on that close: offsets are committed
//! explicitly before it, and a member that never says goodbye is dropped by the group after
//! its session timeout.

use std::ops::Deref;
use std::time::Duration;

/// How long a consumer is given to leave its group before the caller moves on.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Drops `client` on a thread of its own and waits at most `timeout` for the drop to finish.
/// Returns whether it finished in time; if not, the close goes on in the background.
pub fn close_within<T: Send + 'static>(what: &'static str, client: T, timeout: Duration) -> bool {
    let (done, finished) = std::sync::mpsc::channel::<()>();
    let closing = std::thread::Builder::new().name(format!("close {what}")).spawn(move || {
        drop(client);
        let _ = done.send(());
    });
    if let Err(e) = closing {
        // The closure (and the client in it) was dropped on this thread already.
        tracing::warn!(error = %e, what, "no thread to close the Kafka client on: it was closed inline");
        return true;
    }
    match finished.recv_timeout(timeout) {
        Ok(()) => true,
        Err(_) => {
            tracing::warn!(what, timeout = ?timeout, "the Kafka client did not close in time (its group coordinator does not answer); it goes on closing in the background");
            false
        }
    }
}

/// A Kafka client that is closed through [`close_within`] when dropped; it derefs to the
/// client.
pub struct ClosedWithin<T: Send + 'static> {
    client: Option<T>,
    what: &'static str,
    timeout: Duration,
}

impl<T: Send + 'static> ClosedWithin<T> {
    /// Wraps `client`, named `what` in the warning given when it does not close in `timeout`.
    pub fn new(what: &'static str, client: T, timeout: Duration) -> Self {
        Self { client: Some(client), what, timeout }
    }
}

impl<T: Send + 'static> Deref for ClosedWithin<T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.client.as_ref().expect("the client is taken only when dropped")
    }
}

impl<T: Send + 'static> Drop for ClosedWithin<T> {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            close_within(self.what, c, self.timeout);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Instant;

    /// Stands for a client whose close takes the given time.
    struct SlowClose(Duration, Arc<AtomicBool>);
    impl Drop for SlowClose {
        fn drop(&mut self) {
            std::thread::sleep(self.0);
            self.1.store(true, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_close_that_hangs_releases_the_caller_at_the_bound_and_finishes_in_the_background() {
        let closed = Arc::new(AtomicBool::new(false));
        let t0 = Instant::now();
        let in_time = close_within("test client", SlowClose(Duration::from_millis(600), closed.clone()), Duration::from_millis(100));
        let waited = t0.elapsed();
        assert!(!in_time);
        assert!(waited >= Duration::from_millis(100) && waited < Duration::from_millis(500), "waited {waited:?}");
        assert!(!closed.load(Ordering::SeqCst), "released before the close finished");
        std::thread::sleep(Duration::from_millis(900));
        assert!(closed.load(Ordering::SeqCst), "the close finished in the background");
    }

    #[test]
    fn a_quick_close_is_waited_for() {
        let closed = Arc::new(AtomicBool::new(false));
        let wrapped = ClosedWithin::new("test client", SlowClose(Duration::from_millis(50), closed.clone()), Duration::from_secs(5));
        assert!(!closed.load(Ordering::SeqCst));
        drop(wrapped);
        assert!(closed.load(Ordering::SeqCst), "the drop returned only once the close finished");
    }
}
