//! The ACL as the fuzz target `fuzz/fuzz_targets/topic_matcher.rs` drives it (not an API): an ACL built from a
//! validated `AclConfig` without a file, bound for one client, whose PUBLISH and SUBSCRIBE decisions the target
//! compares with a reference matcher.

use fleetgate_config::acl::AclConfig;

use crate::acl::{Acl, ClientAcl};
use crate::decision::Principal;

/// The ACL of `config` bound for `principal`: what a node holds for a client after CONNECT.
pub fn bind_acl(config: AclConfig, principal: &Principal) -> ClientAcl {
    Acl::new(config).bind(principal)
}
