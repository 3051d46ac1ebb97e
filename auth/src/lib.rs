//! Authentication and authorization decisions of the Fleetgate broker node: pure logic, except password
//! verification, which runs argon2 on the blocking pool behind a bounded semaphore. The `[auth]` section and the
//! ACL file are read and validated by `fleetgate_config` (`node::AuthConfig`, `acl::AclConfig`); this crate builds
//! the running state from them and owns the password file.
//!
//! - `snapshot`: policies + ACL + password file of one generation ([`AuthSnapshot`], built from an `AuthConfig`),
//!   swapped whole on reload.
//! - `policy`: a listener's authentication policy and its pure evaluation at CONNECT.
//! - `decision`: [`AuthDecision`], [`Principal`] (and what "the same identity" is), [`AuthFailure`] and its CONNACK
//!   reason codes.
//! - `binding`: client-ID binding ([`ClientIdBinding`]: templates and the ACL's `[[client_ids]]`) and session
//!   ownership ([`claim_session`]: who may take over the session another identity holds).
//! - `authenticator`: the CONNECT entry point ([`Authenticator::authenticate`]) with ban accounting and metrics.
//! - `verify`: argon2 checks on `spawn_blocking`, bounded in concurrency and queue length.
//! - `failures`: brute-force protection, failures per source address and short bans.
//! - `passwd`: the argon2id password file; [`set_password`] for `fleetgate passwd`.
//! - `acl`: the ACL's rules ([`Acl`]), bound per client ([`ClientAcl`]) for PUBLISH and SUBSCRIBE checks.
//! - `template`: `%c` / `%u` / `%cn` placeholders in ACL topics, rendered safely for one client.
//! - `topic`: topic filters: matching, `covers`, `intersects`.
//! - `error`: [`AuthError`] for password-file editing.
//! - `fuzzing` (hidden): an ACL bound without a file, for the fuzz target in `fuzz/`.

mod acl;
mod authenticator;
mod binding;
mod decision;
mod error;
mod failures;
#[doc(hidden)]
pub mod fuzzing;
mod passwd;
mod policy;
mod snapshot;
mod template;
mod topic;
mod verify;

pub use acl::{Acl, AclDecision, ClientAcl};
pub use authenticator::Authenticator;
pub use binding::{ClientIdBinding, SessionClaim, claim_session};
pub use decision::{AuthDecision, AuthFailure, AuthMethod, Principal};
pub use error::AuthError;
pub use passwd::set_password;
pub use policy::Credentials;
pub use snapshot::AuthSnapshot;
