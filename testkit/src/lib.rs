//! Fleetgate's test harness, shared by the end-to-end tests in `tests/tests/*.rs` (declared as `[[test]]` targets of
//! the root package so that `env!("CARGO_BIN_EXE_fleetgate")` exists there) and by anyone else's process tests.
//!
//! | module | owns |
//! |---|---|
//! | [`wait`] | [`eventually`]: poll a condition under a deadline instead of sleeping |
//! | [`process`] | [`ServerProcess`]: a running `fleetgate` child, its captured log lines, port discovery from the `listening` events, SIGTERM/SIGKILL on drop |
//! | [`node`] | [`NodeSpec`] (a node config written into a tempdir) and [`Node`] (a started `fleetgate node` with its MQTT and admin addresses) |
//! | [`lb`] | [`lb::LbProcess`] (a started `fleetgate lb` with its listener and admin addresses, `/backends`) and [`lb::Stopped`] (SIGSTOP, SIGCONT on drop) |
//! | [`dns`] | [`dns::StubDns`]: a stub DNS server on 127.0.0.1:0 (A/AAAA/SRV records, failure modes) for discovery tests |
//! | [`http`] | a tiny HTTP/1.1 GET for the admin port (`/metrics`, `/clients/{id}`, `/healthz`) and Prometheus text parsing |
//! | [`pki`] | a throwaway PKI made with rcgen: CA, server cert, client certs, an expired one, one from another CA |
//! | [`proxy_sender`] | [`ProxySender`]: a TCP forwarder that prefixes every connection with a PROXY v2 header |
//! | [`clients`] | third-party MQTT clients we did not write: `mosquitto_pub`/`mosquitto_sub`, python3 paho (`tests/py/`), all under timeouts |
//! | [`auth`] | auth tests: a node with side files (ACL, password file), the LB with mutual TLS, a raw MQTT client over TCP/TLS reading exact reason codes, a hand-built PROXY v2 header, `fleetgate passwd`, the log scan for secrets |
//! | [`raw`] | hand-made MQTT bytes for the paths a well-behaved client never takes (garbage, oversized, silence) |
//!
//! This is test code: helpers panic with a message saying what failed (`expect`) instead of returning errors, so a
//! failing test points at the step that broke; nothing here runs in production.

pub mod auth;
pub mod clients;
pub mod cluster;
pub mod dns;
pub mod http;
pub mod lb;
pub mod node;
pub mod pki;
pub mod process;
pub mod proxy_sender;
pub mod raw;
pub mod wait;

pub use clients::{CmdOutput, MqttVersion};
pub use node::{Node, NodeSpec};
pub use pki::{CertFiles, Pki};
pub use process::ServerProcess;
pub use proxy_sender::ProxySender;
pub use wait::{TimedOut, eventually};
