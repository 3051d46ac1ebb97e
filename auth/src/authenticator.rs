//! The CONNECT-time entry point the broker calls: policy evaluation, the ban check, the password check on the
//! blocking pool, the ACL's client-ID bindings, and failure accounting, with one metric and at most one log line
//! per outcome. One [`Authenticator`] per process; it outlives reloads (the ban list must), the snapshot is passed
//! per call.

use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use fleetgate_config::node::{
    AuthConfig, BruteForceConfig, DEFAULT_MAX_CONCURRENT_VERIFICATIONS,
    DEFAULT_MAX_WAITING_VERIFICATIONS,
};
use fleetgate_protocol::proxy::PeerIdentity;

use crate::decision::{AuthDecision, AuthFailure};
use crate::failures::FailureTracker;
use crate::policy::{Credentials, Evaluation};
use crate::snapshot::AuthSnapshot;
use crate::verify::{PasswordVerifier, Verified};

/// Process-wide authentication state: the password verifier and the brute-force tracker.
#[derive(Debug)]
pub struct Authenticator {
    verifier: PasswordVerifier,
    failures: Mutex<FailureTracker>,
}

impl Default for Authenticator {
    fn default() -> Self {
        Self::new(
            BruteForceConfig::default(),
            DEFAULT_MAX_CONCURRENT_VERIFICATIONS,
            DEFAULT_MAX_WAITING_VERIFICATIONS,
        )
    }
}

impl Authenticator {
    /// An authenticator with these limits.
    pub(crate) fn new(limits: BruteForceConfig, max_concurrent: usize, max_waiting: usize) -> Self {
        Self {
            verifier: PasswordVerifier::new(max_concurrent, max_waiting),
            failures: Mutex::new(FailureTracker::new(limits)),
        }
    }

    /// An authenticator with the limits of `config`.
    pub fn from_config(config: &AuthConfig) -> Self {
        Self::new(
            config.brute_force,
            config.max_concurrent_verifications,
            config.max_waiting_verifications,
        )
    }

    /// Applies reloaded brute-force limits (the verifier's concurrency needs a restart).
    pub fn set_failure_limits(&self, limits: BruteForceConfig) {
        self.tracker().set_limits(limits);
    }

    fn tracker(&self) -> std::sync::MutexGuard<'_, FailureTracker> {
        // The tracker's state stays consistent even if a holder panicked: every method leaves it valid.
        self.failures.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Decides a CONNECT that arrived on `listener` from `source` (the client's address per the PROXY header,
    /// else the socket peer; `None` disables ban accounting) with LB identity `identity`.
    pub async fn authenticate(
        &self,
        snapshot: &AuthSnapshot,
        listener: &str,
        creds: &Credentials<'_>,
        identity: &PeerIdentity,
        source: Option<IpAddr>,
    ) -> AuthDecision {
        let decision = match snapshot.policy(listener).evaluate(creds, identity) {
            Evaluation::Decided(d) => d,
            Evaluation::NeedsPassword(check) => {
                if source.is_some_and(|ip| self.tracker().is_banned(ip, Instant::now())) {
                    AuthDecision::refuse(AuthFailure::Banned)
                } else {
                    let password = creds.password.unwrap_or_default();
                    let verified = self
                        .verifier
                        .verify(snapshot.passwords(), check.username(), password)
                        .await;
                    match verified {
                        Verified::Match => {
                            if let Some(ip) = source {
                                self.tracker().record_success(ip);
                            }
                            check.finish(true)
                        }
                        Verified::Mismatch => check.finish(false),
                        Verified::Busy => AuthDecision::refuse(AuthFailure::Busy),
                        Verified::Failed => AuthDecision::refuse(AuthFailure::Internal),
                    }
                }
            }
        };
        // The ACL's client-ID bindings, for the identity now proven.
        let decision = match decision {
            AuthDecision::Allow(principal, binding) => {
                match snapshot.acl().check_client_id(&principal) {
                    Ok(acl) => AuthDecision::Allow(principal, binding.max(acl)),
                    Err(failure) => AuthDecision::refuse(failure),
                }
            }
            refused => refused,
        };
        self.account(&decision, source);
        decision
    }

    /// Counts a refusal decided after [`Self::authenticate`] admitted the client (the session-owner check when
    /// the broker attaches it), under the same metric as the others.
    pub fn record_refusal(&self, reason: AuthFailure) {
        self.account(&AuthDecision::refuse(reason), None);
    }

    /// Metrics, ban accounting and the log line of one decision.
    fn account(&self, decision: &AuthDecision, source: Option<IpAddr>) {
        match decision {
            AuthDecision::Allow(p, _) => {
                metrics::counter!("fleetgate_auth_allowed_total", "method" => p.method.as_str())
                    .increment(1);
            }
            AuthDecision::Refuse { reason } => {
                metrics::counter!("fleetgate_auth_refusals_total", "reason" => reason.reason())
                    .increment(1);
                if let (true, Some(ip)) = (reason.counts_towards_ban(), source)
                    && self.tracker().record_failure(ip, Instant::now())
                {
                    metrics::counter!("fleetgate_auth_bans_total").increment(1);
                    tracing::warn!(event = "auth_ban", client.addr = %ip, "too many password failures; banned");
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "authenticator_tests.rs"]
mod tests;
