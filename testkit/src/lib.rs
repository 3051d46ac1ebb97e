//! Fleetgate's test kit: every helper the tests of the workspace share, written once. The process tests of the root
//! package (`tests/*.rs`, where `env!("CARGO_BIN_EXE_fleetgate")` exists and is passed in as `bin`), the in-process
//! tests of `lb/tests/` and `broker-node/tests/`, the unit tests of `discovery/` and `ops/`, and the bench's
//! `gen-certs` use it.
//!
//! | module | owns |
//! |---|---|
//! | [`wait`] | [`eventually`] (poll a condition under a deadline instead of sleeping), [`Poll`], [`wait_until`], [`bounded`] |
//! | [`process`] | [`ServerProcess`]: a running `fleetgate` child, its captured log lines, port discovery from the `listening on <role> <addr>` events, signals ([`Frozen`] for SIGSTOP), SIGTERM/SIGKILL on drop; the log scan for secrets |
//! | [`node`] | [`NodeSpec`] (a node config, alone or clustered, written into a tempdir) and [`Node`] (a started `fleetgate node` with its MQTT, admin and cluster addresses); the client ID ring helpers |
//! | [`layers`] | [`layers::assert_layers`]: a crate's modules import only from their own layer or below, with no cycle |
//! | [`lb`] | [`LbProcess`]: a started `fleetgate lb` with its listener and admin addresses |
//! | [`admin`] | [`Admin`]: an admin port asked what an operator asks (`/metrics`, `/clients/{id}`, `/readyz`, `/backends`), and waited on |
//! | [`http`] | a tiny HTTP/1.1 client (GET, POST) and Prometheus text parsing |
//! | [`pki`] | the one throwaway PKI (rcgen): CA, server and client certificates (expired, foreign, revoked with a CRL, cluster nodes), rustls client configs |
//! | [`raw`] | hand-made MQTT bytes (CONNECT, PUBLISH, SUBSCRIBE, ...) and the one raw packet reader |
//! | [`raw_client`] | [`RawClient`]: a raw MQTT connection over TCP or TLS, exact reason codes, how the server closed it |
//! | [`proxy`] | [`ProxySender`] (a TCP forwarder adding a PROXY v2 header) and hand-built PROXY v2 headers |
//! | [`dns`] | [`dns::StubDns`]: a stub DNS server on 127.0.0.1:0 (A/AAAA/SRV records, failure modes) |
//! | [`clients`] | third-party MQTT clients run as processes: `mosquitto_pub`/`mosquitto_sub`, python3 paho (`testkit/py/`), all under timeouts |
//! | [`rumqttc_client`] | rumqttc (3.1.1 and 5) connected, its events on a channel ([`Events`]) with pickers |
//!
//! This is test code: helpers panic with a message saying what failed (`expect`) instead of returning errors, so a
//! failing test points at the step that broke; nothing here runs in production.

pub mod admin;
pub mod clients;
pub mod dns;
pub mod http;
pub mod layers;
pub mod lb;
pub mod node;
pub mod pki;
pub mod process;
pub mod proxy;
pub mod raw;
pub mod raw_client;
pub mod rumqttc_client;
pub mod wait;

pub use admin::Admin;
pub use clients::{CmdOutput, MosquittoMessage, MqttVersion};
pub use lb::LbProcess;
pub use node::{Node, NodeSpec, id_owned_by, ring_owner};
pub use pki::{CertFiles, Pki};
pub use process::{Frozen, ServerProcess, Signal, assert_no_secrets, scratch_dir};
pub use proxy::ProxySender;
pub use raw_client::{Closed, RawClient};
pub use rumqttc_client::Events;
pub use wait::{Poll, TimedOut, WAIT, bounded, eventually, eventually_blocking, wait_until};
