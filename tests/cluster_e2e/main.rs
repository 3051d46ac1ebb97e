//! Three `fleetgate node` processes on loopback joined into one cluster: cross-node delivery at every QoS with
//! order kept, wildcard and shared subscriptions across nodes, retained replication (`delivery`); session takeover
//! between nodes with queued QoS 1 messages, a kill -9 whose routes the others drop within 3 s, a rolling restart
//! under load with zero loss (`sessions`); peers discovered through DNS SRV records (a stub DNS server standing in
//! for a Kubernetes headless Service), cluster links under mutual TLS refusing a node of another CA and a node
//! claiming a name its certificate lacks (`links`); a session refused to another identity across nodes
//! (`identity`). Clients are rumqttc (MQTT 3.1.1); client IDs are picked by the same ring the LB and the nodes
//! use, so each test knows which node owns which client.

#![allow(clippy::unwrap_used)] // tests may unwrap (CONTRIBUTING)

#[path = "../common/mod.rs"]
mod common;

mod delivery;
mod harness;
mod identity;
mod links;
mod peer;
mod resync;
mod sessions;
mod trust;
