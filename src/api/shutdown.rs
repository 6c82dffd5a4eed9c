//! The server's shutdown phases, shared by the accept loop and the SSE streams: `Draining` stops
//! new work while accepted responses finish; `Closing` (after the grace period) makes every open
//! event stream send its last events and end, so no stream can hold the process open.
use std::sync::Arc;

use tokio::sync::watch;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Running,
    Draining,
    Closing,
}

/// A cheaply cloned handle on the shutdown phase (never triggered unless someone calls it).
#[derive(Clone, Debug)]
pub struct Shutdown {
    phase: Arc<watch::Sender<Phase>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self {
            phase: Arc::new(watch::Sender::new(Phase::Running)),
        }
    }
}

impl Shutdown {
    /// Stop taking new connections; accepted responses continue.
    pub fn begin_drain(&self) {
        self.phase.send_if_modified(|p| advance(p, Phase::Draining));
    }

    /// The grace period is over: open streams end now.
    pub fn close_streams(&self) {
        self.phase.send_if_modified(|p| advance(p, Phase::Closing));
    }

    pub fn is_draining(&self) -> bool {
        *self.phase.borrow() >= Phase::Draining
    }

    /// Resolves once streams must end (at once if they already must).
    pub async fn closing(&self) {
        let mut rx = self.phase.subscribe();
        // The sender lives in `self`, so `wait_for` cannot fail while we wait.
        let _ = rx.wait_for(|p| *p == Phase::Closing).await;
    }
}

fn advance(phase: &mut Phase, to: Phase) -> bool {
    if *phase < to {
        *phase = to;
        true
    } else {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn phases_only_move_forward_and_wake_waiters() {
        let shutdown = Shutdown::default();
        assert!(!shutdown.is_draining());
        let waiter = tokio::spawn({
            let s = shutdown.clone();
            async move { s.closing().await }
        });
        shutdown.begin_drain();
        assert!(shutdown.is_draining());
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "draining is not closing");
        shutdown.close_streams();
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("closing wakes the waiter")
            .unwrap();
        shutdown.begin_drain();
        shutdown.closing().await; // still closing: resolves at once
    }
}
