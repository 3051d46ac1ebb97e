//! In-process end-to-end tests of the LB: real sockets on 127.0.0.1:0, rumqttc as the client, fake backends
//! that decode the PROXY header. Every step is bounded by `harness::WAIT`.

#![allow(clippy::unwrap_used)] // tests may unwrap (CONTRIBUTING)

mod control;
mod harness;
mod memory;
mod refusals;
mod reloads;
mod routing;
mod tls;
