//! Placement before a `throughput` run measures (not the LB's health probe): `--colocate` (find, for each pair, a
//! publisher client ID that a balancer puts on its subscriber's node) and `--sub-target` (wait until every
//! subscriber, connected to another cluster node, is reachable from its publisher). Both send markers: a marker is
//! a QoS 0 PUBLISH with a payload shorter than a timestamp, so a late one is counted as foreign by the subscriber
//! loop, never as a latency sample.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::{BufMut, BytesMut};
use tokio::io::AsyncWriteExt;

use crate::mqtt::{self, Version};
use crate::net::{self, Session, Target};
use crate::throughput::{KEEP_ALIVE_S, Pattern, Plan};

/// `--colocate`: publisher client IDs tried per pair before giving up; with k backends one try misses with
/// probability (k-1)/k, so 24 tries fail with 3 backends about once in 16,000 pairs.
const COLOCATE_TRIES: u32 = 24;
/// `--colocate`: how long a marker may take to reach the pair's subscriber when both sit on the same node.
const COLOCATE_WAIT: Duration = Duration::from_millis(300);
/// `--sub-target`: how long one marker may take to cross to the subscriber's node before another is sent.
const ROUTE_MARKER_WAIT: Duration = Duration::from_millis(50);
/// `--sub-target`: bound on waiting for one subscriber's route; a cluster whose nodes see each other learns a
/// subscription in milliseconds, so this only trips when the nodes are not (yet) linked.
const ROUTE_WAIT: Duration = Duration::from_secs(10);
/// Marker payload: shorter than a timestamp (the bytes predate the module's name).
const MARKER: &[u8] = b"fgb-probe";

/// Publishes one marker on `topic`.
async fn send_marker(publisher: &mut Session, version: Version, topic: &str) -> anyhow::Result<()> {
    let mut marker = BytesMut::with_capacity(64);
    mqtt::encode_publish(&mut marker, version, topic, 0, 0, MARKER.len(), |b| {
        b.put_slice(MARKER)
    });
    publisher
        .stream
        .write_all(&marker)
        .await
        .context("writing marker")
}

/// Waits until every subscriber receives a marker from a publisher whose messages it is to get (its pair's
/// publisher, or publisher 0 for fan-in and fan-out); returns the markers sent.
pub(crate) async fn await_routes(
    plan: &Plan,
    pubs: &mut [Session],
    subs: &mut [Session],
    version: Version,
) -> anyhow::Result<u64> {
    let mut sent = 0;
    for (j, sub) in subs.iter_mut().enumerate() {
        let k = if plan.pattern == Pattern::Pairs { j } else { 0 };
        let publisher = pubs.get_mut(k).context("no publisher for a subscriber")?;
        let deadline = Instant::now() + ROUTE_WAIT;
        loop {
            send_marker(publisher, version, &plan.topics[k])
                .await
                .with_context(|| format!("publisher {k}"))?;
            sent += 1;
            if net::await_publish(sub, version, ROUTE_MARKER_WAIT)
                .await
                .with_context(|| format!("subscriber {j}"))?
            {
                break;
            }
            if Instant::now() >= deadline {
                bail!(
                    "subscriber {j} got nothing from publisher {k} within {ROUTE_WAIT:?}: are the nodes linked?"
                );
            }
        }
    }
    Ok(sent)
}

/// Finds, for every pair, a publisher client ID that lands on its subscriber's node (all pairs at once).
pub(crate) async fn colocate(
    target: &Arc<Target>,
    run_id: &str,
    plan: &Plan,
    subs: Vec<Session>,
) -> anyhow::Result<(Vec<Session>, Vec<Session>, u32)> {
    let mut tasks = tokio::task::JoinSet::new();
    let count = subs.len();
    for (i, sub) in subs.into_iter().enumerate() {
        let (target, topic, run_id) = (
            Arc::clone(target),
            plan.topics[i].clone(),
            run_id.to_string(),
        );
        tasks.spawn(async move { (i, colocate_pair(&target, &run_id, i, &topic, sub).await) });
    }
    let mut pairs: Vec<Option<(Session, Session)>> = (0..count).map(|_| None).collect();
    let mut tries = 0;
    while let Some(joined) = tasks.join_next().await {
        let (i, result) = joined.context("colocate task panicked")?;
        let (sub, publisher, n) = result.with_context(|| format!("colocating pair {i}"))?;
        tries += n;
        pairs[i] = Some((sub, publisher));
    }
    let (subs, pubs) = pairs.into_iter().flatten().unzip();
    Ok((subs, pubs, tries))
}

async fn colocate_pair(
    target: &Target,
    run_id: &str,
    i: usize,
    topic: &str,
    mut sub: Session,
) -> anyhow::Result<(Session, Session, u32)> {
    let version = target.version;
    for attempt in 0..COLOCATE_TRIES {
        let mut publisher = net::connect(
            target,
            &format!("fgb-{run_id}-p{i}-{attempt}"),
            KEEP_ALIVE_S,
        )
        .await?;
        send_marker(&mut publisher, version, topic).await?;
        if net::await_publish(&mut sub, version, COLOCATE_WAIT).await? {
            return Ok((sub, publisher, attempt + 1));
        }
        net::close(publisher).await;
    }
    bail!("no publisher client ID reached the subscriber's node in {COLOCATE_TRIES} tries")
}
