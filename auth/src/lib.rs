//! Authentication and authorization decisions of the Fleetgate broker node: pure logic, except password
//! verification, which runs argon2 on the blocking pool behind a bounded semaphore.
//!
//! - [`snapshot`]: policies + ACL + password file of one generation ([`AuthSnapshot`]), swapped whole on reload.
//! - [`policy`]: a listener's authentication policy and its pure evaluation at CONNECT.
//! - [`decision`]: [`AuthDecision`], [`Principal`], [`AuthFailure`] and its CONNACK reason codes.
//! - [`authenticator`]: the CONNECT entry point ([`Authenticator::authenticate`]) with ban accounting and metrics.
//! - [`verify`]: argon2 checks on `spawn_blocking`, bounded in concurrency and queue length.
//! - [`failures`]: brute-force protection, failures per source address and short bans.
//! - [`passwd`]: the argon2id password file; [`set_password`] for `fleetgate passwd`.
//! - [`acl`]: ACL rules, bound per client ([`ClientAcl`]) for PUBLISH and SUBSCRIBE checks.
//! - [`template`]: `%c` / `%u` / `%cn` placeholders in ACL topics and their safe substitution.
//! - [`topic`]: topic filters: matching, `covers`, `intersects`.
//! - [`error`]: [`AuthError`] for password-file editing.

pub mod acl;
pub mod authenticator;
pub mod decision;
pub mod error;
pub mod failures;
pub mod passwd;
pub mod policy;
pub mod snapshot;
pub mod template;
pub mod topic;
pub mod verify;

pub use acl::{Acl, AclDecision, ClientAcl};
pub use authenticator::Authenticator;
pub use decision::{AuthDecision, AuthFailure, AuthMethod, Principal};
pub use error::AuthError;
pub use failures::FailureTracker;
pub use passwd::{PasswordFile, set_password};
pub use policy::{Credentials, Evaluation, ListenerPolicy};
pub use snapshot::AuthSnapshot;
pub use verify::PasswordVerifier;
