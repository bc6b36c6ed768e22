//! A stop request shared by signal handlers, `POST /stop` and the trigger loop. The loop checks it
//! between batches, so a stop always lands on a batch boundary (after a commit).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

/// Cloneable handle; all clones share one flag.
#[derive(Clone, Default)]
pub struct StopHandle {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    requested: AtomicBool,
    notify: Notify,
}

impl StopHandle {
    /// Asks the query to stop after the current batch.
    pub fn request(&self) {
        self.inner.requested.store(true, Ordering::SeqCst);
        self.inner.notify.notify_waiters();
    }

    pub fn is_requested(&self) -> bool {
        self.inner.requested.load(Ordering::SeqCst)
    }

    /// Sleeps for `duration`, waking early on a stop request.
    pub async fn sleep(&self, duration: Duration) {
        if self.is_requested() || duration.is_zero() {
            return;
        }
        let notified = self.inner.notify.notified();
        tokio::select! {
            _ = tokio::time::sleep(duration) => {}
            _ = notified => {}
        }
    }
}
