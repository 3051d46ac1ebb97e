//! The bottom layer of the node: the data the broker keeps, with the rules that need nothing above them.
//! Nothing here imports the broker, the cluster or a connection.
//!
//! - [`message`]: the shared application message and one delivery of it to one session.
//! - [`budget`]: the node's memory budget, and the session backlogs that report to it.
//! - [`session`]: what outlives a connection (subscriptions, queue, inflight, packet IDs) and a session in
//!   transit between nodes ([`session::SessionSnapshot`]).
//! - [`will`]: the will of a connection and the right to publish it.
//! - [`trie`]: the one topic trie (stored filters matched against a topic), used by [`router`] and by the
//!   cluster's remote routes.
//! - [`router`]: the local subscriptions, with shared-subscription groups.
//! - [`retained`]: retained messages, stamped for last-writer-wins replication; [`topic_index`]: their topics
//!   by level, for the filters of SUBSCRIBE.

pub(crate) mod budget;
pub(crate) mod message;
pub(crate) mod retained;
pub(crate) mod router;
pub(crate) mod session;
pub(crate) mod topic_index;
pub(crate) mod trie;
pub(crate) mod will;
