//! A backend's health state, the bottom of the health layer: the decided state (unknown, up, down) and the run
//! of consecutive probe results behind it, flipped only after `rise` / `fall` consecutive results (pingora's
//! `Health`). The probes that feed it live in [`crate::health_check`]; selection only asks [`Health::is_up`]
//! (through [`crate::backend::BackendState::is_healthy`]). It lives beside the backend's load and suspect state,
//! carried across reloads by the backend's stable name; `fleetgate_lb_backend_up{backend}` is 1 or 0.
//!
//! A backend starts "unknown", which counts as up (a fresh LB must not refuse every client until its first
//! probes return); the first result decides at once.

use std::sync::Mutex;
use std::sync::PoisonError;
use std::sync::atomic::{AtomicU8, Ordering};

use crate::metrics::{BACKEND_TRANSITIONS, BACKEND_UP};

const UNKNOWN: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

/// A backend's health: the decided state and the run of consecutive results behind it.
#[derive(Debug)]
pub(crate) struct Health {
    name: String,
    state: AtomicU8,
    runs: Mutex<(u32, u32)>,
}

impl Health {
    /// Unknown (counts as up) until the first result.
    pub(crate) fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            state: AtomicU8::new(UNKNOWN),
            runs: Mutex::new((0, 0)),
        }
    }

    /// Whether new connections may go there (up or not yet known).
    pub(crate) fn is_up(&self) -> bool {
        self.state.load(Ordering::Relaxed) != DOWN
    }

    /// `"unknown"`, `"up"` or `"down"`.
    pub(crate) fn label(&self) -> &'static str {
        match self.state.load(Ordering::Relaxed) {
            UP => "up",
            DOWN => "down",
            _ => "unknown",
        }
    }

    /// Sets the state directly (tests).
    #[cfg(test)]
    pub(crate) fn force(&self, up: bool) {
        self.state
            .store(if up { UP } else { DOWN }, Ordering::Relaxed);
    }

    /// Records one result; returns the new state when it flipped.
    pub(crate) fn record(&self, ok: bool, rise: u32, fall: u32) -> Option<bool> {
        let mut runs = self.runs.lock().unwrap_or_else(PoisonError::into_inner);
        let (successes, failures) = &mut *runs;
        if ok {
            *successes = successes.saturating_add(1);
            *failures = 0;
        } else {
            *failures = failures.saturating_add(1);
            *successes = 0;
        }
        let current = self.state.load(Ordering::Relaxed);
        let next = match current {
            UNKNOWN => Some(if ok { UP } else { DOWN }),
            UP if *failures >= fall => Some(DOWN),
            DOWN if *successes >= rise => Some(UP),
            _ => None,
        }?;
        self.state.store(next, Ordering::Relaxed);
        let up = next == UP;
        metrics::gauge!(BACKEND_UP, "backend" => self.name.clone()).set(if up { 1.0 } else { 0.0 });
        if current != UNKNOWN {
            metrics::counter!(BACKEND_TRANSITIONS, "backend" => self.name.clone(), "to" => if up { "up" } else { "down" })
                .increment(1);
        }
        Some(up)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flips_only_after_consecutive_results() {
        let h = Health::new("b");
        assert!(h.is_up());
        assert_eq!(h.label(), "unknown");
        assert_eq!(h.record(true, 2, 3), Some(true));
        assert_eq!(h.record(false, 2, 3), None);
        assert_eq!(h.record(false, 2, 3), None);
        assert_eq!(
            h.record(true, 2, 3),
            None,
            "a success resets the failure run"
        );
        for _ in 0..2 {
            assert_eq!(h.record(false, 2, 3), None);
        }
        assert_eq!(h.record(false, 2, 3), Some(false));
        assert!(!h.is_up());
        assert_eq!(h.record(true, 2, 3), None);
        assert_eq!(h.record(true, 2, 3), Some(true));
    }
}
