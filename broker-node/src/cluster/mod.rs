//! The broker cluster: N nodes that behave as one broker. The layer above the broker: it hears what the broker
//! does through the [`ClusterHooks`] it implements (a message to forward, filters and sessions added or removed,
//! retained writes) and acts on the broker only through the broker's named methods (deliver locally, export or
//! install a session, apply a retained write). The CONNECT path asks it first ([`Cluster::acquire`] fetches a
//! session held elsewhere before the broker attaches the connection).
//!
//! - [`frame`]: the wire format. [`validate`]: every frame from a peer checked as client input is.
//!   [`routes`]: which peer subscribes to what. [`link`]: the node-to-node links (dial, accept, Hello and identity,
//!   heartbeats, reader, resets by reason). [`outbox`]: the per-peer queue and its writer (frames encoded into one
//!   buffer, written whole). [`tls`]: mutual TLS on them, reloaded when its files change. [`discover`]: peers
//!   from DNS or a static list (`peers_from`). [`advertised`] and [`versioned`]: the tables we advertise (our
//!   filters, our claims), versioned by change numbers. [`sync`]: streaming those tables and the retained store
//!   to a peer, in full or after its watermarks. [`forward`]: messages to peers, and redirects while a session
//!   moves. [`handoff`]: session takeover and drain; [`moved`]: where handed-away sessions went.
//!   [`membership`]: links to peers coming up and going down. [`apply`]: frames from peers, in link order.
//!
//! # Trust
//! Off loopback a cluster port requires mutual TLS (`[cluster.tls]`): a peer presents a certificate of the
//! cluster CA that names the node its Hello claims, and a name already linked from another identity is refused
//! (`cluster_peer_rejected`). Every frame is then validated ([`validate`]) and everything a peer can make us hold
//! is bounded (routes, claims, a handed-over session's queue and subscriptions, remembered moves).
//!
//! # Membership
//! A node dials the peers of its `[cluster] peers` list (or those `peers_from` discovers, refreshed, itself
//! skipped by name) and every node that dialed it (the Hello frame carries the
//! address to dial back), so any subset of the cluster is enough to join. A peer is *up* while our outbound
//! link to it is established; both directions carry heartbeats every `heartbeat_interval` and a link silent for
//! `dead_after` (default 2.5 s) is closed: the peer's routes leave the route table (kept aside for a resume,
//! [`sync::RESUME_WINDOW`]) and it leaves the ring. The ring ([`fleetgate_protocol::ring`], the one the LB uses)
//! is this node plus the up peers, by node name. `/readyz` is true once every configured peer was tried once and
//! every up peer's sync has arrived.
//!
//! # Links and ordering
//! Each node sends on its own outbound connection and receives on the connections peers opened to it, so each
//! direction is one ordered TCP stream: messages from one publisher reach a peer in publish order, and frames
//! sent one after another (a session handover, then the reply to a request for it) are applied in that order.
//! The per-peer queue is bounded at `queue_capacity` frames for message forwards (overflow:
//! `fleetgate_dropped_messages_total{reason="cluster_queue_full"}`); control frames are never dropped, and a sync
//! stream waits for the queue to drain between chunks.
//!
//! # Wire protocol (`frame/`)
//! Every frame is `u32` big-endian length, then a type byte and its fields (integers big-endian, strings `u16`
//! length + UTF-8, byte strings `u32` length); frames above `max_packet_size + 64 KiB` are refused. A message is
//! topic, QoS, retain, remaining expiry (ms), v5 properties and payload. Watermarks are three change numbers
//! (routes, claims, retained).
//!
//! | type | frame | meaning |
//! |---|---|---|
//! | 0x01 | Hello {version, name, advertise, incarnation, resume?} | first frame each way; version must be 3; the acceptor's `resume` offers the dialer an incremental sync after those watermarks |
//! | 0x02 | Heartbeat | liveness when idle |
//! | 0x10 / 0x11 | RouteAdd / RouteRemove {filter, seq} | the sender has (no longer) a subscription on a filter, `$share/..` included |
//! | 0x12 | Claim {client_id, held, seq} | the sender holds (no longer) a session the ring assigns to another node |
//! | 0x13 | SyncDone {upto} | end of the sync: the receiver holds the sender's tables up to these watermarks |
//! | 0x14 | SyncBegin {full} | start of the sync after Hello: everything (what the receiver held of the sender is void unless sent again) or the changes after `resume` |
//! | 0x15 | Ack {watermarks} | acceptor to dialer: how far it applied the dialer's tables (retained deletes every peer has can go) |
//! | 0x16 | Progress {watermarks} | after the sync, each heartbeat interval while they move: the sender's change numbers (its retained writes from third nodes are not sent on, yet a resume need not resend them) |
//! | 0x20 | Publish {direct, groups, sessions, msg} | deliver to local plain subscribers (direct), to the listed shared groups and redirected sessions |
//! | 0x21 | Retain {stamp, topic, msg?, seq} | retained set/clear, last writer wins by hybrid logical stamp |
//! | 0x30 | TakeoverRequest {req, client_id, clean_start, claimant} | hand me this client's session; `claimant` is the connecting client's identity and client-ID binding, checked against the session's owner before anything moves |
//! | 0x31 | TakeoverReply {req, moved_to?, refused} | no session here (it went to `moved_to`), or `refused`: it is another identity's |
//! | 0x32..0x35 | SessionBegin / SessionSub / SessionMsg / SessionEnd {req, ..} | a session handed over (reply, or pushed at drain with the top bit of `req` set); SessionBegin carries the identity its client authenticated with |
//! | 0x36 | SessionInstalled {client_id} | the handed-over session is in place at the sender and every peer has its routes: redirects to it end |
//! | 0x37 | SessionArrived {client_id} | the handed-over session is in the sender's router: the sender's later messages reached it there |
//! | 0x40 | Leaving | the sender drains: forget its routes and claims |
//! | 0x41 / 0x42 | Barrier / BarrierAck {id} | everything before it was applied |
//!
//! # Sessions
//! A node that holds a session for a client ID the ring assigns elsewhere advertises a *claim*. On CONNECT, a
//! node asks the claimants and the ring owner (when that is not itself) for the session; the common case — this
//! node is the owner and nobody claims the ID — costs no round trip. See [`handoff`].

mod advertised;
mod apply;
mod discover;
mod forward;
pub(crate) mod frame;
mod handoff;
pub(crate) mod link;
pub(crate) mod membership;
mod moved;
mod outbox;
mod routes;
mod sync;
pub(crate) mod tls;
mod validate;
mod versioned;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use fleetgate_config::node::{ClusterConfig, LimitsConfig};
use fleetgate_ops::admin::Readiness;
use fleetgate_protocol::mqtt::ByteString;
use fleetgate_protocol::ring::{Ring, RingNode};
use metrics::{Counter, Gauge, Histogram};
use parking_lot::{Mutex, RwLock};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::access::Access;
use crate::broker::{ClusterHooks, ForwardMemo};
use crate::metrics::DropReason;
use crate::state::message::Message;
use crate::state::retained::Stamp;
use frame::{FRAME_OVERHEAD, Frame};
use handoff::Pending;
use outbox::LinkTx;
use routes::{PeerName, RouteTable};

/// Who is at the other end of an inbound link: the certificate it presented (TLS), or its address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LinkIdentity {
    /// The end-entity certificate (DER), verified against the cluster CA.
    Certificate(Vec<u8>),
    /// The peer's IP address (plain TCP: loopback or `insecure_plaintext`).
    Address(std::net::IpAddr),
}

/// The inbound connection a peer opened to us.
#[derive(Debug)]
pub(crate) struct Inbound {
    /// Which connection (a reconnect gets a new one).
    id: u64,
    /// The peer's process (a restart is a new incarnation).
    incarnation: u64,
    /// Who it proved to be.
    identity: LinkIdentity,
}

#[derive(Debug, Default)]
struct Peer {
    out: Option<Arc<LinkTx>>,
    /// The current inbound connection from this peer.
    inbound: Option<Inbound>,
    /// The sync of its tables on that connection.
    sync: sync::InboundSync,
    /// Its routes and claims kept since its inbound link dropped, for a resume.
    suspended: Option<sync::Suspended>,
    /// How far it applied our tables (its `Ack`s on our outbound link).
    acked: Option<frame::Watermarks>,
    /// It said Leaving.
    leaving: bool,
    claims: HashSet<ByteString>,
}

#[derive(Debug, Default)]
struct Peers {
    map: HashMap<PeerName, Peer>,
    /// Where to dial each known node.
    known: HashMap<String, SocketAddr>,
    /// Addresses with a dial loop running.
    dialing: HashSet<SocketAddr>,
    /// The latest discovered peer addresses (`peers_from`).
    discovered: HashSet<SocketAddr>,
}

/// Cluster metric handles.
#[derive(Debug)]
struct ClusterMetrics {
    peers_up: Gauge,
    remote_routes: Gauge,
    forwarded: Counter,
    takeover_sent: Counter,
    takeover_received: Counter,
    handoff_seconds: Histogram,
    sessions_pushed: Counter,
    /// `fleetgate_dropped_messages_total{reason="cluster_link_down"}`.
    dropped_link_down: Counter,
    /// `fleetgate_dropped_messages_total{reason="cluster_queue_full"}`.
    dropped_queue_full: Counter,
    /// `fleetgate_dropped_messages_total{reason="cluster_session_gone"}`.
    dropped_session_gone: Counter,
    /// `fleetgate_cluster_sync_bytes_total{kind}`: bytes of syncs sent, full and incremental.
    sync_bytes: [Counter; 2],
    /// `fleetgate_cluster_sync_seconds{kind}`: time to stream a sync.
    sync_seconds: [Histogram; 2],
}

impl ClusterMetrics {
    /// Index of a sync kind in the per-kind handles.
    fn sync_kind(kind: &str) -> usize {
        usize::from(kind == "incremental")
    }

    /// Bytes of syncs sent, by kind (`full`, `incremental`).
    fn sync_bytes(&self, kind: &str) -> &Counter {
        &self.sync_bytes[Self::sync_kind(kind)]
    }

    /// Time to stream a sync, by kind.
    fn sync_seconds(&self, kind: &str) -> &Histogram {
        &self.sync_seconds[Self::sync_kind(kind)]
    }
}

impl ClusterMetrics {
    fn register() -> ClusterMetrics {
        metrics::describe_gauge!(
            "fleetgate_cluster_peers_up",
            "Cluster peers with a live link"
        );
        metrics::describe_gauge!(
            "fleetgate_cluster_remote_routes",
            "Subscription filters advertised by peers"
        );
        metrics::describe_counter!(
            "fleetgate_cluster_forwarded_total",
            "Messages forwarded to peers (one per peer)"
        );
        metrics::describe_counter!(
            "fleetgate_cluster_takeover_requests_total",
            "Session takeover requests, by direction (sent, received)"
        );
        metrics::describe_histogram!(
            "fleetgate_cluster_handoff_seconds",
            "Time to fetch a session from another node at CONNECT"
        );
        metrics::describe_counter!(
            "fleetgate_cluster_sessions_pushed_total",
            "Sessions handed to another node while draining"
        );
        metrics::describe_counter!(
            "fleetgate_cluster_sync_bytes_total",
            "Bytes of table syncs sent to peers, by kind (full, incremental)"
        );
        metrics::describe_histogram!(
            "fleetgate_cluster_sync_seconds",
            "Time to stream a table sync to a peer, by kind (full, incremental)"
        );
        metrics::describe_counter!(
            "fleetgate_cluster_link_resets_total",
            "Cluster links that were up and ended, by reason and direction"
        );
        metrics::describe_counter!(
            "fleetgate_cluster_links_refused_total",
            "Inbound cluster links refused before they carried anything, by reason"
        );
        metrics::describe_counter!(
            "fleetgate_cluster_peer_violations_total",
            "Frames from peers against the rules for peer input, by reason (each closed its link)"
        );
        ClusterMetrics {
            peers_up: metrics::gauge!("fleetgate_cluster_peers_up"),
            remote_routes: metrics::gauge!("fleetgate_cluster_remote_routes"),
            forwarded: metrics::counter!("fleetgate_cluster_forwarded_total"),
            takeover_sent: metrics::counter!("fleetgate_cluster_takeover_requests_total", "direction" => "sent"),
            takeover_received: metrics::counter!("fleetgate_cluster_takeover_requests_total", "direction" => "received"),
            handoff_seconds: metrics::histogram!("fleetgate_cluster_handoff_seconds"),
            sessions_pushed: metrics::counter!("fleetgate_cluster_sessions_pushed_total"),
            dropped_link_down: metrics::counter!(crate::metrics::DROPPED_MESSAGES, "reason" => DropReason::ClusterLinkDown.label()),
            dropped_queue_full: metrics::counter!(crate::metrics::DROPPED_MESSAGES, "reason" => DropReason::ClusterQueueFull.label()),
            dropped_session_gone: metrics::counter!(crate::metrics::DROPPED_MESSAGES, "reason" => DropReason::ClusterSessionGone.label()),
            sync_bytes: ["full", "incremental"].map(
                |kind| metrics::counter!("fleetgate_cluster_sync_bytes_total", "kind" => kind),
            ),
            sync_seconds: ["full", "incremental"]
                .map(|kind| metrics::histogram!("fleetgate_cluster_sync_seconds", "kind" => kind)),
        }
    }
}

/// This node's view of the cluster.
#[derive(Debug)]
pub(crate) struct Cluster {
    /// This node's name.
    pub(crate) name: PeerName,
    config: ClusterConfig,
    advertise: SocketAddr,
    incarnation: u64,
    frame_limit: usize,
    peers: Mutex<Peers>,
    routes: RwLock<RouteTable>,
    local: Mutex<advertised::Advertised>,
    redirects: Mutex<Vec<forward::Redirect>>,
    /// `redirects` is not empty (written under its lock): spares every publish the lock while there is none.
    has_redirects: AtomicBool,
    /// Bumped whenever the routes or the outbound links change: a connection's cached forward (see
    /// [`forward`]) built under an older value is stale.
    route_generation: AtomicU64,
    pub(crate) pending: Mutex<HashMap<u64, Pending>>,
    barriers: Mutex<HashMap<u64, oneshot::Sender<()>>>,
    /// Client IDs whose session this node handed away, and to whom (answers later requests).
    moved: Mutex<moved::Moved>,
    next_id: AtomicU64,
    rr: AtomicUsize,
    leaving: AtomicBool,
    /// Configured peers not yet tried once (readiness waits for them).
    initial_dials: AtomicUsize,
    readiness: Readiness,
    metrics: ClusterMetrics,
    /// Stops every link task.
    pub(crate) shutdown: CancellationToken,
    /// Mutual TLS on links, when configured.
    pub(crate) tls: Option<tls::LinkTls>,
    /// This node's access control: what a handed-over session may keep.
    access: Arc<Access>,
    /// This node's limits: what a peer may send.
    limits: LimitsConfig,
}

impl Cluster {
    /// A cluster view for node `name` whose cluster port is bound at `bound`; links start with [`link::start`].
    /// Fails when `[cluster.tls]` files cannot be loaded.
    pub(crate) fn new(
        name: &str,
        config: ClusterConfig,
        bound: SocketAddr,
        limits: LimitsConfig,
        access: Arc<Access>,
        readiness: Readiness,
    ) -> Result<Cluster, tls::TlsError> {
        if config.insecure_plaintext {
            tracing::warn!(
                event = "cluster_insecure_plaintext",
                bind = %config.bind,
                "cluster links are plain TCP off loopback (insecure_plaintext = true): anyone who reaches the \
                 cluster port is a node; use [cluster.tls] outside a lab"
            );
        }
        let incarnation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        // Readiness waits for one try of every configured peer, and for the first discovered set.
        let initial = config.peers.len() + usize::from(config.peers_from.is_some());
        let tls = config.tls.as_ref().map(tls::LinkTls::load).transpose()?;
        Ok(Cluster {
            name: Arc::from(name),
            advertise: config.advertise.unwrap_or(bound),
            config,
            incarnation,
            frame_limit: limits.max_packet_size as usize + FRAME_OVERHEAD,
            peers: Mutex::new(Peers::default()),
            routes: RwLock::new(RouteTable::new()),
            local: Mutex::new(advertised::Advertised::default()),
            redirects: Mutex::new(Vec::new()),
            has_redirects: AtomicBool::new(false),
            route_generation: AtomicU64::new(0),
            pending: Mutex::new(HashMap::new()),
            barriers: Mutex::new(HashMap::new()),
            moved: Mutex::new(moved::Moved::default()),
            next_id: AtomicU64::new(1),
            rr: AtomicUsize::new(0),
            leaving: AtomicBool::new(false),
            initial_dials: AtomicUsize::new(initial),
            readiness,
            metrics: ClusterMetrics::register(),
            shutdown: CancellationToken::new(),
            tls,
            access,
            limits,
        })
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Names of the peers with a live outbound link that are not leaving.
    pub(crate) fn up_peers(&self) -> Vec<PeerName> {
        let peers = self.peers.lock();
        let mut up: Vec<PeerName> = peers
            .map
            .iter()
            .filter(|(_, p)| p.out.is_some() && !p.leaving)
            .map(|(n, _)| n.clone())
            .collect();
        up.sort();
        up
    }

    /// The ring of this node and its up peers (`with_self` = false: the ring after this node leaves).
    pub(crate) fn ring(&self, with_self: bool) -> Ring {
        let mut nodes: Vec<RingNode> = self
            .up_peers()
            .iter()
            .map(|n| RingNode::new(n.to_string()))
            .collect();
        if with_self {
            nodes.push(RingNode::new(self.name.to_string()));
        }
        Ring::new(nodes)
    }

    /// True once every reachable peer has synced with us.
    pub(crate) fn is_synced(&self) -> bool {
        if self.initial_dials.load(Ordering::Acquire) > 0 {
            return false;
        }
        let peers = self.peers.lock();
        peers
            .map
            .values()
            .all(|p| p.out.is_none() || p.leaving || p.sync.synced)
    }

    /// True once the drain began: new CONNECTs go elsewhere.
    pub(crate) fn is_leaving(&self) -> bool {
        self.leaving.load(Ordering::Acquire)
    }

    /// Recomputes `/readyz`: synced and not leaving.
    pub(crate) fn update_readiness(&self) {
        let ready = !self.leaving.load(Ordering::Acquire) && self.is_synced();
        self.readiness.set(ready);
    }

    // ---- sending -------------------------------------------------------------------------------------------

    /// Queues a control frame on `link`; a full queue resets the link (the peer resyncs on the new link).
    fn push(&self, link: &LinkTx, frame: &Frame) -> bool {
        link.push(self.config.queue_capacity, false, |buf| frame.encode(buf))
    }

    /// Sends a control frame to one peer; false when it has no live link.
    pub(crate) fn send_to(&self, peer: &str, frame: &Frame) -> bool {
        let link = self.peers.lock().map.get(peer).and_then(|p| p.out.clone());
        match link {
            Some(link) => self.push(&link, frame),
            None => false,
        }
    }

    /// Sends control frames to one peer, back to back on its ordered link.
    pub(crate) fn send_all_to(&self, peer: &str, frames: &[Frame]) -> bool {
        let link = self.peers.lock().map.get(peer).and_then(|p| p.out.clone());
        let Some(link) = link else { return false };
        frames.iter().all(|f| self.push(&link, f))
    }

    /// Sends a control frame to every peer with a live link.
    pub(crate) fn broadcast(&self, frame: &Frame) {
        let links: Vec<Arc<LinkTx>> = self
            .peers
            .lock()
            .map
            .values()
            .filter_map(|p| p.out.clone())
            .collect();
        for l in links {
            self.push(&l, frame);
        }
    }

    /// Replicates a retained write made here (change `seq` of the store) to every peer.
    fn replicate_retained(&self, msg: &Message, stamp: &Stamp, seq: u64) {
        let value = (!msg.payload.is_empty()).then_some(msg);
        let links: Vec<Arc<LinkTx>> = self
            .peers
            .lock()
            .map
            .values()
            .filter_map(|p| p.out.clone())
            .collect();
        for l in links {
            l.push(self.config.queue_capacity, false, |buf| {
                frame::encode_retain(buf, stamp, &msg.topic, value, seq);
            });
        }
    }

    /// One barrier round with every linked peer (bounded by `dead_after` each): everything queued to them so far
    /// was written and applied.
    pub(crate) async fn settle(&self) {
        let peers: Vec<PeerName> = {
            let p = self.peers.lock();
            p.map
                .iter()
                .filter(|(_, p)| p.out.is_some())
                .map(|(n, _)| n.clone())
                .collect()
        };
        let waits: Vec<_> = peers.iter().filter_map(|p| self.barrier(p)).collect();
        for w in waits {
            let _ = tokio::time::timeout(self.config.dead_after, w).await;
        }
    }

    /// Sends a Barrier to `peer`; resolves once it answered (everything we sent before was applied).
    pub(crate) fn barrier(&self, peer: &str) -> Option<oneshot::Receiver<()>> {
        let id = self.next_id();
        let (tx, rx) = oneshot::channel();
        self.barriers.lock().insert(id, tx);
        if self.send_to(peer, &Frame::Barrier(id)) {
            Some(rx)
        } else {
            self.barriers.lock().remove(&id);
            None
        }
    }

    /// `client_id`'s session was handed to `to` (later requests for it are pointed there).
    pub(crate) fn remember_moved(&self, client_id: &ByteString, to: &PeerName) {
        self.moved
            .lock()
            .insert(client_id.clone(), to.clone(), Instant::now());
    }

    /// Where `client_id`'s session went, if it left recently.
    pub(crate) fn moved_to(&self, client_id: &str) -> Option<PeerName> {
        self.moved.lock().get(client_id, Instant::now())
    }

    /// Peers that claim `client_id`, and the ring owner when it is not this node: whom to ask for its session.
    pub(crate) fn candidates(&self, client_id: &str) -> Vec<PeerName> {
        let mut out: Vec<PeerName> = {
            let peers = self.peers.lock();
            peers
                .map
                .iter()
                .filter(|(_, p)| p.out.is_some() && !p.leaving && p.claims.contains(client_id))
                .map(|(n, _)| n.clone())
                .collect()
        };
        if let Some(owner) = self.owner(client_id)
            && owner != *self.name
            && !out.iter().any(|p| **p == *owner)
        {
            out.push(Arc::from(owner.as_str()));
        }
        out
    }
}

/// What the broker tells the cluster: each event becomes frames to the peers that must learn it.
impl ClusterHooks for Cluster {
    fn forward(&self, msg: &Arc<Message>, served: &[ByteString], memo: &mut ForwardMemo) {
        Cluster::forward(self, msg, served, memo);
    }

    fn filter_added(&self, filter: &ByteString) {
        Cluster::filter_added(self, filter);
    }

    fn filter_removed(&self, filter: &str) {
        Cluster::filter_removed(self, filter);
    }

    fn session_added(&self, client_id: &ByteString) {
        Cluster::session_added(self, client_id);
    }

    fn session_removed(&self, client_id: &ByteString) {
        Cluster::session_removed(self, client_id);
    }

    fn retained_written(&self, msg: &Arc<Message>, stamp: &Stamp, seq: u64) {
        self.replicate_retained(msg, stamp, seq);
    }
}
