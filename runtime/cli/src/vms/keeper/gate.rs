//! The keeper's gate for control requests. Before the keeper leaves or
//! runs itself again (a restart), it closes the gate and waits for the
//! requests inside: whatever they changed (a `stop` among them) is seen
//! by what it does next, and a request that comes later is closed
//! unanswered, so its caller asks again (the keeper's next run) or finds
//! the appliance exited. Without the gate, a stop accepted just after the
//! keeper last looked was answered "exited" while the keeper went on to
//! restart the appliance.

use std::sync::{Condvar, Mutex};
use std::time::Duration;

#[derive(Default)]
pub(super) struct Gate {
    state: Mutex<Inside>,
    left: Condvar,
}

#[derive(Default)]
struct Inside {
    closed: bool,
    answering: usize,
}

/// A request being answered; it leaves the gate when dropped.
pub(super) struct Pass<'a>(&'a Gate);

impl Gate {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inside> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lets a request in; `None` once the gate is closed.
    pub(super) fn enter(&self) -> Option<Pass<'_>> {
        let mut inside = self.lock();
        if inside.closed {
            return None;
        }
        inside.answering += 1;
        Some(Pass(self))
    }

    /// Lets no more in and waits, `timeout` at most, for the requests
    /// inside to be answered; whether they all were.
    pub(super) fn close(&self, timeout: Duration) -> bool {
        let mut inside = self.lock();
        inside.closed = true;
        let (inside, _) = self
            .left
            .wait_timeout_while(inside, timeout, |i| i.answering > 0)
            .unwrap_or_else(|e| e.into_inner());
        inside.answering == 0
    }
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        let mut inside = self.0.lock();
        inside.answering -= 1;
        if inside.answering == 0 {
            self.0.left.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Gate;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    #[test]
    fn close_waits_for_the_requests_inside_and_lets_none_in_after() {
        let gate = Gate::default();
        let seen = AtomicBool::new(false);
        std::thread::scope(|s| {
            let pass = gate.enter().expect("an open gate lets a request in");
            s.spawn(|| {
                let _pass = pass;
                std::thread::sleep(Duration::from_millis(200));
                // What the request changes, the closer sees.
                seen.store(true, Ordering::SeqCst);
            });
            assert!(gate.close(Duration::from_secs(10)));
            assert!(
                seen.load(Ordering::SeqCst),
                "close returned before the request was answered"
            );
        });
        assert!(gate.enter().is_none(), "a closed gate let a request in");
        // Closing again (the keeper leaving after a restart was called
        // off) waits for nothing.
        assert!(gate.close(Duration::ZERO));
    }

    #[test]
    fn close_gives_up_on_a_request_that_is_not_answered_in_time() {
        let gate = Gate::default();
        let pass = gate.enter().unwrap();
        assert!(!gate.close(Duration::from_millis(50)));
        drop(pass);
        assert!(gate.close(Duration::ZERO));
    }
}
