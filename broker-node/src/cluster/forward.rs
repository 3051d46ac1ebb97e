//! The cluster side of the publish path: [`Cluster::forward`] sends a message published here, once, to every peer
//! with a matching subscription (one shared-group member cluster-wide, local members first), and redirects cover
//! the moment a session moves between nodes.
//!
//! A redirect: when this node hands session S to node T, a peer P may still send S's messages here (it did not
//! know S moved) while T, on another link, is not yet holding S. Until T confirms the install
//! (SessionInstalled) and for `REDIRECT_LINGER` after that, a message for S that arrives here is passed on to T
//! addressed to S itself (the `sessions` list of the Publish frame), and our advertisement of S's filters is
//! held so P keeps sending them here meanwhile. A message published on this node needs no redirect when T gets it
//! anyway: the handover frames went out on the same ordered link before it.
//!
//! T itself is such a P until S is in its router: a message T published before the install missed S there and
//! came here, possibly after S left. So a message from T is redirected back to T until T's SessionArrived frame
//! (queued at the install, under T's router write lock, while T's publishes forward under its read lock)
//! arrives here; every message from T behind that frame reached S at T. Redirects favour duplicates over loss:
//! a message can reach S both directly from P and redirected (QoS 1 is at least once).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use fleetgate_protocol::mqtt::ByteString;
use fleetgate_protocol::mqtt::topic::{self, split_shared};

use super::Cluster;
use super::frame::{self, PublishBody};
use super::outbox::{LinkTx, Refused};
use super::routes::PeerName;
use crate::broker::ForwardMemo;
use crate::state::message::Message;

/// How long a redirect lasts after the new node advertised every filter of the session: messages already in flight
/// to us from other peers arrive within a round trip on a LAN.
const REDIRECT_LINGER: Duration = Duration::from_secs(1);
/// How long a redirect lasts at most, when the confirmation never comes.
const REDIRECT_MAX_AGE: Duration = Duration::from_secs(10);

/// A session just handed to `peer`.
#[derive(Debug)]
pub(crate) struct Redirect {
    peer: PeerName,
    client_id: ByteString,
    /// The session's full filters.
    filters: Vec<ByteString>,
    /// Filters whose advertisement we still hold for it (the new node does not advertise them yet).
    held: Vec<ByteString>,
    since: Instant,
    /// T's SessionArrived came: T's own messages no longer need redirecting back to it.
    arrived: bool,
    confirmed: Option<Instant>,
}

impl Redirect {
    fn expired(&self, now: Instant) -> bool {
        now.duration_since(self.since) >= REDIRECT_MAX_AGE
            || self
                .confirmed
                .is_some_and(|at| now.duration_since(at) >= REDIRECT_LINGER)
    }

    fn matches(&self, topic_name: &str) -> bool {
        self.filters
            .iter()
            .any(|f| topic::matches(split_shared(f).1, topic_name))
    }
}

/// Where a message to redirect came from.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Origin<'a> {
    /// Published on this node.
    Local,
    /// Forwarded by `peer`, for our plain subscribers (`direct`), shared groups (`groups`) and named
    /// sessions (`sessions`).
    Peer {
        /// The sender.
        peer: &'a str,
        /// Sent for our plain subscribers.
        direct: bool,
        /// Sent for at least one shared group of ours.
        groups: bool,
        /// Sent for these sessions by name (itself a redirect).
        sessions: &'a [ByteString],
    },
}

impl Origin<'_> {
    /// Whether redirect `r` applies to a message from here (its topic already matched).
    fn wants(&self, r: &Redirect) -> bool {
        match *self {
            Origin::Local => true,
            Origin::Peer {
                peer,
                direct,
                groups,
                sessions,
            } => {
                // The new holder had the session when it published this: the session got it there.
                if peer == &*r.peer && r.arrived {
                    return false;
                }
                direct || groups || sessions.contains(&r.client_id)
            }
        }
    }
}

/// Forwards of one message, counted for the metrics.
#[derive(Debug, Default)]
struct PushTally {
    sent: u64,
    link_down: u64,
    queue_full: u64,
}

impl PushTally {
    fn count(&mut self, pushed: Result<(), Refused>) {
        match pushed {
            Ok(()) => self.sent += 1,
            Err(Refused::Closed) => self.link_down += 1,
            Err(Refused::Full) => self.queue_full += 1,
        }
    }
}

/// Where one message goes on one peer.
#[derive(Debug)]
struct Target {
    peer: PeerName,
    direct: bool,
    groups: Vec<ByteString>,
    sessions: Vec<ByteString>,
}

/// Where the last message a connection published went, kept in the connection's [`ForwardMemo`]: a device
/// publishes on the same topic again and again, and the routes and links rarely change in between, so a repeat
/// skips the route lookup (a trie walk under the routes lock) and the peers lock. Valid while the cluster's
/// route generation is the one it was built under; only plain (not shared-group) routes are kept, and redirects
/// are looked at every time.
#[derive(Debug)]
struct CachedForward {
    topic: ByteString,
    generation: u64,
    links: Vec<Arc<LinkTx>>,
}

fn target<'a>(plan: &'a mut Vec<Target>, peer: &PeerName) -> &'a mut Target {
    match plan.iter().position(|t| t.peer == *peer) {
        Some(i) => &mut plan[i],
        None => {
            plan.push(Target {
                peer: peer.clone(),
                direct: false,
                groups: Vec::new(),
                sessions: Vec::new(),
            });
            let last = plan.len() - 1;
            &mut plan[last]
        }
    }
}

impl Cluster {
    /// Forwards a message published on this node, once, to every peer with a matching subscription; a shared
    /// group already served here (`served`) is not served again, any other goes to one peer with members.
    pub(crate) fn forward(
        &self,
        msg: &Arc<Message>,
        served: &[ByteString],
        memo: &mut ForwardMemo,
    ) {
        // Read before the routes: a change after this read makes the entry built from them stale at once.
        let generation = self.route_generation.load(Ordering::Acquire);
        if let Some(hit) = memo.get::<CachedForward>()
            && hit.generation == generation
            && hit.topic == msg.topic
            && !self.has_redirects.load(Ordering::Acquire)
        {
            self.send_cached(msg, &hit.links);
            return;
        }
        let matches = self.routes.read().matches(&msg.topic);
        memo.clear();
        if matches.groups.is_empty() && !self.has_redirects.load(Ordering::Acquire) {
            let links = {
                let peers = self.peers.lock();
                matches
                    .direct
                    .iter()
                    .map(|peer| peers.map.get(peer).and_then(|p| p.out.clone()))
                    .collect::<Option<Vec<_>>>()
            };
            // A peer without a link is left to the full path (which counts the drop).
            if let Some(links) = links {
                self.send_cached(msg, &links);
                memo.set(CachedForward {
                    topic: msg.topic.clone(),
                    generation,
                    links,
                });
                return;
            }
        }
        let mut plan: Vec<Target> = matches
            .direct
            .into_iter()
            .map(|peer| Target {
                peer,
                direct: true,
                groups: Vec::new(),
                sessions: Vec::new(),
            })
            .collect();
        for (group, members) in matches.groups {
            if served.contains(&group) || members.is_empty() {
                continue;
            }
            let pick = &members[self.rr.fetch_add(1, Ordering::Relaxed) % members.len()];
            target(&mut plan, pick).groups.push(group);
        }
        self.add_redirects(&msg.topic, Origin::Local, &mut plan);
        if !plan.is_empty() {
            self.send_publish(msg, plan);
        }
    }

    /// A message a peer forwarded to us: pass it on to sessions that just moved away from here; returns the
    /// client IDs it was passed on for.
    pub(crate) fn redirect(&self, msg: &Arc<Message>, origin: Origin<'_>) -> Vec<ByteString> {
        let mut plan = Vec::new();
        self.add_redirects(&msg.topic, origin, &mut plan);
        let redirected = plan.iter().flat_map(|t| t.sessions.clone()).collect();
        if !plan.is_empty() {
            self.send_publish(msg, plan);
        }
        redirected
    }

    /// Adds the redirected sessions `topic_name` is for, as `origin` asks.
    fn add_redirects(&self, topic_name: &str, origin: Origin<'_>, plan: &mut Vec<Target>) {
        if !self.has_redirects.load(Ordering::Acquire) {
            return;
        }
        let expired: Vec<ByteString> = {
            let mut redirects = self.redirects.lock();
            if redirects.is_empty() {
                return;
            }
            let now = Instant::now();
            let mut released = Vec::new();
            redirects.retain_mut(|r| {
                if r.expired(now) {
                    released.append(&mut r.held);
                    false
                } else {
                    true
                }
            });
            self.has_redirects
                .store(!redirects.is_empty(), Ordering::Release);
            for r in redirects.iter() {
                if !r.matches(topic_name) || !origin.wants(r) {
                    continue;
                }
                let t = target(plan, &r.peer);
                // Published here with a plain copy going to the new node anyway: the handover frames are ahead
                // of it on the link, so the session gets it there.
                if matches!(origin, Origin::Local) && t.direct {
                    continue;
                }
                if !t.sessions.contains(&r.client_id) {
                    t.sessions.push(r.client_id.clone());
                }
            }
            plan.retain(|t| t.direct || !t.groups.is_empty() || !t.sessions.is_empty());
            released
        };
        for f in expired {
            self.filter_removed(&f);
        }
    }

    /// Queues a Publish frame for plain subscribers on each of `links`.
    fn send_cached(&self, msg: &Message, links: &[Arc<LinkTx>]) {
        if links.is_empty() {
            return;
        }
        let encoded = (links.len() > 1).then(|| frame::encode_message(msg));
        let body = match &encoded {
            Some(b) => PublishBody::Encoded(b),
            None => PublishBody::Message(msg),
        };
        let mut tally = PushTally::default();
        for link in links {
            tally.count(link.try_push(self.config.queue_capacity, true, |out| {
                frame::encode_publish(out, true, &[], &[], body);
            }));
        }
        self.record(tally);
    }

    fn record(&self, tally: PushTally) {
        if tally.sent > 0 {
            self.metrics.forwarded.increment(tally.sent);
        }
        if tally.link_down > 0 {
            self.metrics.dropped_link_down.increment(tally.link_down);
        }
        if tally.queue_full > 0 {
            self.metrics.dropped_queue_full.increment(tally.queue_full);
        }
    }

    /// Queues one Publish frame per target peer, encoded straight into each peer's write buffer (the message
    /// part encoded once when it goes to several peers).
    fn send_publish(&self, msg: &Message, plan: Vec<Target>) {
        let encoded = (plan.len() > 1).then(|| frame::encode_message(msg));
        let body = match &encoded {
            Some(b) => PublishBody::Encoded(b),
            None => PublishBody::Message(msg),
        };
        let mut tally = PushTally::default();
        {
            // Pushing under the peers lock keeps the link alive without cloning a handle per message; a push
            // takes only its queue's lock.
            let peers = self.peers.lock();
            for t in &plan {
                let Some(link) = peers.map.get(&t.peer).and_then(|p| p.out.as_ref()) else {
                    tally.count(Err(Refused::Closed));
                    continue;
                };
                tally.count(link.try_push(self.config.queue_capacity, true, |out| {
                    frame::encode_publish(out, t.direct, &t.groups, &t.sessions, body);
                }));
            }
        }
        self.record(tally);
    }

    /// Session `client_id` subscribed to `filters` was handed to `peer` (its handover frames are queued).
    pub(crate) fn start_redirect(
        &self,
        peer: &PeerName,
        client_id: &ByteString,
        filters: &[ByteString],
    ) {
        if filters.is_empty() {
            return;
        }
        // Until the peer confirms the install, other peers must keep sending the session's messages here, even
        // when the peer advertises the same filters: it may receive them before the session.
        let held = filters.to_vec();
        for f in &held {
            self.filter_added(f);
        }
        let mut redirects = self.redirects.lock();
        redirects.push(Redirect {
            peer: peer.clone(),
            client_id: client_id.clone(),
            filters: filters.to_vec(),
            held,
            since: Instant::now(),
            arrived: false,
            confirmed: None,
        });
        self.has_redirects.store(true, Ordering::Release);
    }

    /// `peer` put the session of `client_id` we handed it in its router: what it publishes from now on reaches
    /// the session there.
    pub(crate) fn redirect_arrived(&self, peer: &str, client_id: &str) {
        for r in self
            .redirects
            .lock()
            .iter_mut()
            .filter(|r| &*r.peer == peer && r.client_id == client_id)
        {
            r.arrived = true;
        }
    }

    /// `peer` installed the session of `client_id` we handed it: stop holding its filters; the redirect lingers
    /// for what other peers already sent here.
    pub(crate) fn redirect_installed(&self, peer: &str, client_id: &str) {
        let released: Vec<ByteString> = {
            let mut redirects = self.redirects.lock();
            let now = Instant::now();
            let mut out = Vec::new();
            for r in redirects
                .iter_mut()
                .filter(|r| &*r.peer == peer && r.client_id == client_id)
            {
                out.append(&mut r.held);
                r.confirmed.get_or_insert(now);
            }
            out
        };
        for f in released {
            self.filter_removed(&f);
        }
    }

    /// True while a session handed away is not yet confirmed installed.
    pub(crate) fn redirects_pending(&self) -> bool {
        self.redirects.lock().iter().any(|r| r.confirmed.is_none())
    }

    /// The link to `peer` went down: its redirects end.
    pub(crate) fn end_redirects_to(&self, peer: &str) {
        let released: Vec<ByteString> = {
            let mut redirects = self.redirects.lock();
            let mut out = Vec::new();
            redirects.retain_mut(|r| {
                if &*r.peer == peer {
                    out.append(&mut r.held);
                    false
                } else {
                    true
                }
            });
            self.has_redirects
                .store(!redirects.is_empty(), Ordering::Release);
            out
        };
        for f in released {
            self.filter_removed(&f);
        }
    }
}
