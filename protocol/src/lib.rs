//! Wire formats shared by the load balancer and the broker node.
//!
//! - [`mqtt`]: the MQTT codec (rmqtt-codec behind our own model and extra spec checks).
//! - [`peek`]: reading the first CONNECT of a connection without consuming it (the LB's view).
//! - [`proxy`]: PROXY protocol v1/v2: decoding with a trusted-CIDR policy, v2 encoding with identity TLVs.
//! - [`ring`]: rendezvous (highest-random-weight) hashing of client IDs onto named nodes.

pub mod mqtt;
pub mod peek;
pub mod proxy;
pub mod ring;
