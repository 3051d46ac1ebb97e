//! rumqttc, an MQTT client library we did not write, driven from tests: [`v3_client`] / [`v5_client`] connect
//! (MQTT 3.1.1 / 5) and run the event loop on a task whose events arrive on a channel ([`Events`], which stops at
//! the first connection error so rumqttc never reconnects behind a test's back); the pickers ([`v3_publish`],
//! [`v5_suback`], ...) select the packets a test waits for.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5 as mqtt5;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::wait::WAIT;

/// Keep alive of every client unless a test changes it: long enough that no PINGREQ interleaves with a test's
/// packets.
pub const KEEP_ALIVE: Duration = Duration::from_secs(30);

/// Requests (PUBLISH, SUBSCRIBE, ...) a client queues before `publish().await` waits for the event loop: room for
/// a test's bursts of a few hundred messages.
const REQUEST_CAPACITY: usize = 1000;

/// Why [`Events::next_within`] found no matching event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Missed {
    /// Nothing matching arrived before the deadline.
    TimedOut,
    /// The connection failed (rumqttc's error text).
    Failed(String),
    /// The event loop ended.
    Ended,
}

impl fmt::Display for Missed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Missed::TimedOut => write!(f, "timed out"),
            Missed::Failed(e) => write!(f, "connection error: {e}"),
            Missed::Ended => write!(f, "event loop ended"),
        }
    }
}

/// The events of one rumqttc connection, forwarded from its event loop task; dropping this kills the connection
/// (the socket closes without DISCONNECT, an ungraceful close).
pub struct Events<E> {
    rx: mpsc::UnboundedReceiver<Result<E, String>>,
    task: JoinHandle<()>,
}

impl<E> Drop for Events<E> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<E: fmt::Debug> Events<E> {
    /// The next event matching `pick` within `deadline`, skipping others.
    pub async fn next_within<T>(
        &mut self,
        deadline: Duration,
        mut pick: impl FnMut(&E) -> Option<T>,
    ) -> Result<T, Missed> {
        let end = Instant::now() + deadline;
        loop {
            match tokio::time::timeout_at(end, self.rx.recv()).await {
                Err(_) => return Err(Missed::TimedOut),
                Ok(None) => return Err(Missed::Ended),
                Ok(Some(Err(e))) => return Err(Missed::Failed(e)),
                Ok(Some(Ok(event))) => {
                    if let Some(t) = pick(&event) {
                        return Ok(t);
                    }
                }
            }
        }
    }

    /// The next event matching `pick`, skipping others; panics after [`WAIT`] or on a connection error.
    pub async fn next_matching<T>(&mut self, what: &str, pick: impl FnMut(&E) -> Option<T>) -> T {
        self.next_within(WAIT, pick)
            .await
            .unwrap_or_else(|missed| panic!("waiting for {what}: {missed}"))
    }

    /// The next `n` events matching `pick`, each within [`WAIT`]; panics otherwise.
    pub async fn take<T>(
        &mut self,
        n: usize,
        what: &str,
        mut pick: impl FnMut(&E) -> Option<T>,
    ) -> Vec<T> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match self.next_within(WAIT, &mut pick).await {
                Ok(t) => out.push(t),
                Err(missed) => panic!("got {} of {n} {what}: {missed}", out.len()),
            }
        }
        out
    }

    /// Every event matching `pick` until none has come for `quiet` (or the connection ended).
    pub async fn collect<T>(
        &mut self,
        quiet: Duration,
        mut pick: impl FnMut(&E) -> Option<T>,
    ) -> Vec<T> {
        let mut out = Vec::new();
        while let Ok(t) = self.next_within(quiet, &mut pick).await {
            out.push(t);
        }
        out
    }

    /// Asserts nothing matching `pick` arrives within `quiet` (the wait is the behaviour under test).
    pub async fn assert_none(&mut self, quiet: Duration, mut pick: impl FnMut(&E) -> bool) {
        let deadline = Instant::now() + quiet;
        while let Ok(Some(event)) = tokio::time::timeout_at(deadline, self.rx.recv()).await {
            if let Ok(event) = event {
                assert!(!pick(&event), "unexpected event {event:?}");
            }
        }
    }

    /// Waits (skipping events) until the connection ends: its error text, `"closed"`, or `None` after `deadline`.
    pub async fn closed(&mut self, deadline: Duration) -> Option<String> {
        let end = Instant::now() + deadline;
        loop {
            match tokio::time::timeout_at(end, self.rx.recv()).await {
                Err(_) => return None,
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => return Some(e),
                Ok(None) => return Some("closed".into()),
            }
        }
    }

    /// The error the connection ended with (skipping events); panics after [`WAIT`].
    pub async fn error(&mut self) -> String {
        self.closed(WAIT)
            .await
            .expect("timed out waiting for the connection to end")
    }

    /// Kills the event loop, closing the socket without DISCONNECT (an ungraceful close).
    pub fn kill(self) {
        drop(self);
    }
}

/// A rumqttc event loop of either protocol version.
trait EventSource: Send + 'static {
    type Event: Send + 'static;
    fn next_event(&mut self) -> impl Future<Output = Result<Self::Event, String>> + Send;
}

impl EventSource for rumqttc::EventLoop {
    type Event = rumqttc::Event;
    async fn next_event(&mut self) -> Result<Self::Event, String> {
        self.poll().await.map_err(|e| e.to_string())
    }
}

impl EventSource for rumqttc::v5::EventLoop {
    type Event = rumqttc::v5::Event;
    async fn next_event(&mut self) -> Result<Self::Event, String> {
        self.poll().await.map_err(|e| e.to_string())
    }
}

/// Runs `source` on a task until its first error, and waits for the CONNACK that `connack` picks.
async fn start<S: EventSource, A>(
    mut source: S,
    connack: fn(&S::Event) -> Option<A>,
) -> Result<(Events<S::Event>, A), String>
where
    S::Event: fmt::Debug,
{
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            let event = source.next_event().await;
            let failed = event.is_err();
            if tx.send(event).is_err() || failed {
                return;
            }
        }
    });
    let mut events = Events { rx, task };
    let ack = events
        .next_within(WAIT, connack)
        .await
        .map_err(|missed| missed.to_string())?;
    Ok((events, ack))
}

/// An MQTT 3.1.1 client `id` connected to `addr` (CONNACK seen), with [`KEEP_ALIVE`] unless `tweak` changes it;
/// the error text when the connection fails or is refused.
pub async fn try_v3_client(
    addr: SocketAddr,
    id: &str,
    tweak: impl FnOnce(&mut rumqttc::MqttOptions),
) -> Result<
    (
        rumqttc::AsyncClient,
        Events<rumqttc::Event>,
        rumqttc::ConnAck,
    ),
    String,
> {
    let mut opts = rumqttc::MqttOptions::new(id, addr.ip().to_string(), addr.port());
    opts.set_keep_alive(KEEP_ALIVE);
    tweak(&mut opts);
    let (client, event_loop) = rumqttc::AsyncClient::new(opts, REQUEST_CAPACITY);
    let (events, connack) = start(event_loop, v3_connack).await?;
    Ok((client, events, connack))
}

/// [`try_v3_client`] that panics when the client cannot connect.
pub async fn v3_client(
    addr: SocketAddr,
    id: &str,
    tweak: impl FnOnce(&mut rumqttc::MqttOptions),
) -> (
    rumqttc::AsyncClient,
    Events<rumqttc::Event>,
    rumqttc::ConnAck,
) {
    try_v3_client(addr, id, tweak)
        .await
        .unwrap_or_else(|e| panic!("{id}: no CONNACK from {addr}: {e}"))
}

/// An MQTT 5 client `id` connected to `addr` (CONNACK seen), with [`KEEP_ALIVE`] unless `tweak` changes it; panics
/// when it cannot connect.
pub async fn v5_client(
    addr: SocketAddr,
    id: &str,
    tweak: impl FnOnce(&mut rumqttc::v5::MqttOptions),
) -> (
    rumqttc::v5::AsyncClient,
    Events<rumqttc::v5::Event>,
    mqtt5::ConnAck,
) {
    let mut opts = rumqttc::v5::MqttOptions::new(id, addr.ip().to_string(), addr.port());
    opts.set_keep_alive(KEEP_ALIVE);
    tweak(&mut opts);
    let (client, event_loop) = rumqttc::v5::AsyncClient::new(opts, REQUEST_CAPACITY);
    let (events, connack) = start(event_loop, v5_connack)
        .await
        .unwrap_or_else(|e| panic!("{id}: no CONNACK from {addr}: {e}"));
    (client, events, connack)
}

/// Subscribes `client` to `filter` and waits for the SUBACK on its `events` (skipping events before it, so only
/// where no message can come first).
pub async fn v3_subscribe(
    client: &rumqttc::AsyncClient,
    events: &mut Events<rumqttc::Event>,
    filter: &str,
    qos: rumqttc::QoS,
) -> rumqttc::SubAck {
    client
        .subscribe(filter, qos)
        .await
        .unwrap_or_else(|e| panic!("queue SUBSCRIBE {filter}: {e}"));
    events.next_matching("SUBACK", v3_suback).await
}

/// [`v3_subscribe`] for an MQTT 5 client.
pub async fn v5_subscribe(
    client: &rumqttc::v5::AsyncClient,
    events: &mut Events<rumqttc::v5::Event>,
    filter: &str,
    qos: rumqttc::v5::mqttbytes::QoS,
) {
    client
        .subscribe(filter, qos)
        .await
        .unwrap_or_else(|e| panic!("queue SUBSCRIBE {filter}: {e}"));
    events.next_matching("SUBACK", v5_suback).await;
}

fn v3_connack(e: &rumqttc::Event) -> Option<rumqttc::ConnAck> {
    match e {
        rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(ack)) => Some(ack.clone()),
        _ => None,
    }
}

fn v5_connack(e: &rumqttc::v5::Event) -> Option<mqtt5::ConnAck> {
    match e {
        rumqttc::v5::Event::Incoming(rumqttc::v5::Incoming::ConnAck(ack)) => Some(ack.clone()),
        _ => None,
    }
}

/// v3 PUBLISH picker.
pub fn v3_publish(e: &rumqttc::Event) -> Option<rumqttc::Publish> {
    match e {
        rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) => Some(p.clone()),
        _ => None,
    }
}

/// v3 SUBACK picker.
pub fn v3_suback(e: &rumqttc::Event) -> Option<rumqttc::SubAck> {
    match e {
        rumqttc::Event::Incoming(rumqttc::Packet::SubAck(ack)) => Some(ack.clone()),
        _ => None,
    }
}

/// v3 PUBACK picker.
pub fn v3_puback(e: &rumqttc::Event) -> Option<()> {
    matches!(e, rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))).then_some(())
}

/// v5 PUBLISH picker.
pub fn v5_publish(e: &rumqttc::v5::Event) -> Option<mqtt5::Publish> {
    match e {
        rumqttc::v5::Event::Incoming(rumqttc::v5::Incoming::Publish(p)) => Some(p.clone()),
        _ => None,
    }
}

/// v5 SUBACK picker.
pub fn v5_suback(e: &rumqttc::v5::Event) -> Option<()> {
    matches!(
        e,
        rumqttc::v5::Event::Incoming(rumqttc::v5::Incoming::SubAck(_))
    )
    .then_some(())
}
