//! Cluster state at fleet scale, for `bench/run cluster-scale`:
//! - `fill`: retained messages (QoS 1, a window of PUBACKs per connection) and subscription filters (held by a few
//!   sessions until `--hold` ends), so that nodes carry a fleet's worth of routes and retained messages;
//! - `pairs-check`: one subscriber per node per other node, publishers that publish every 100 ms until their
//!   subscriber got one; reports when every ordered pair of nodes delivered.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::mqtt::{self, Packet};
use crate::net::{self, LinkArgs, Session, Target};
use crate::stats;

/// Keep alive of the sessions `fill` holds: longer than any hold, so they stay silent.
const KEEP_ALIVE_S: u16 = 600;
/// How often `pairs-check` publishes again while a pair has not delivered.
const RETRY: Duration = Duration::from_millis(100);

/// Options of `fill`.
#[derive(Debug, clap::Args)]
pub struct FillArgs {
    /// Node address.
    #[arg(long)]
    pub target: SocketAddr,
    #[command(flatten)]
    pub link: LinkArgs,
    /// Retained messages to publish, on `{prefix}/r/{i}`.
    #[arg(long, default_value_t = 0)]
    pub retained: usize,
    /// Payload bytes of each retained message.
    #[arg(long, default_value_t = 16)]
    pub payload_bytes: usize,
    /// Connections publishing the retained messages.
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    /// PUBLISHes awaiting PUBACK per connection.
    #[arg(long, default_value_t = 200)]
    pub window: usize,
    /// Subscription filters to hold, on `{prefix}/f/{session}/{j}/#`.
    #[arg(long, default_value_t = 0)]
    pub filters: usize,
    /// Sessions holding the filters.
    #[arg(long, default_value_t = 20)]
    pub filter_sessions: usize,
    /// How long to hold the filters once all are subscribed.
    #[arg(long, default_value = "0s", value_parser = fleetgate_config::duration::parse_duration)]
    pub hold: Duration,
    /// Created once the retained messages are acknowledged and every filter subscribed, holding the JSON line
    /// of what it took so far.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
    /// Topic and client ID prefix (processes must differ).
    #[arg(long, default_value = "scale")]
    pub prefix: String,
}

/// Runs `fill` and returns its JSON line.
pub async fn fill(args: FillArgs) -> anyhow::Result<serde_json::Value> {
    let target = Arc::new(Target::new(args.target, &args.link)?);
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let per = args.retained.div_ceil(args.connections.max(1));
    for c in 0..args.connections.max(1) {
        let (target, prefix) = (Arc::clone(&target), args.prefix.clone());
        let range = (c * per)..((c + 1) * per).min(args.retained);
        let (window, payload) = (args.window.max(1), args.payload_bytes);
        tasks.spawn(async move {
            let id = format!("fgb-{prefix}-ret-{c}");
            let mut s = net::connect(&target, &id, KEEP_ALIVE_S).await?;
            publish_retained(&mut s, target.version, &prefix, range, window, payload).await?;
            net::close(s).await;
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.context("retained task")??;
    }
    let retained_s = start.elapsed().as_secs_f64();

    let start = Instant::now();
    let per = args.filters.div_ceil(args.filter_sessions.max(1));
    let mut holders = Vec::new();
    for c in 0..args.filter_sessions.max(1) {
        let count = per.min(args.filters.saturating_sub(c * per));
        if count == 0 {
            break;
        }
        let id = format!("fgb-{}-sub-{c}", args.prefix);
        let mut s = net::connect(&target, &id, KEEP_ALIVE_S).await?;
        subscribe_many(&mut s, target.version, &args.prefix, c, count).await?;
        holders.push(s);
    }
    let subscribe_s = start.elapsed().as_secs_f64();
    let report = serde_json::json!({
        "cmd": "fill",
        "retained": args.retained,
        "retained_s": retained_s,
        "retained_per_s": args.retained as f64 / retained_s.max(1e-9),
        "filters": args.filters,
        "subscribe_s": subscribe_s,
    });
    if let Some(path) = &args.ready_file {
        // Written whole, then renamed: a reader that sees the file sees all of it.
        let part = path.with_extension("part");
        std::fs::write(&part, format!("{report}\n"))
            .with_context(|| format!("writing {}", part.display()))?;
        std::fs::rename(&part, path).with_context(|| format!("creating {}", path.display()))?;
    }
    tokio::time::sleep(args.hold).await;
    for s in holders {
        net::close(s).await;
    }
    Ok(report)
}

/// Publishes retained QoS 1 messages `{prefix}/r/{i}` for `range`, at most `window` awaiting PUBACK.
async fn publish_retained(
    s: &mut Session,
    version: mqtt::Version,
    prefix: &str,
    range: std::ops::Range<usize>,
    window: usize,
    payload: usize,
) -> anyhow::Result<()> {
    let total = range.len();
    let (mut sent, mut acked) = (0usize, 0usize);
    let mut next = range.start;
    let mut out = BytesMut::with_capacity(64 * 1024);
    while acked < total {
        while sent - acked < window && next < range.end {
            let topic = format!("{prefix}/r/{next}");
            let start = out.len();
            // Packet IDs 1..=65535, reused once acknowledged (the window is far below 65535).
            let id = (next % 65_535 + 1) as u16;
            mqtt::encode_publish(&mut out, version, &topic, 1, id, payload, |b| {
                b.extend(std::iter::repeat_n(b'x', payload));
            });
            out[start] |= 0x01; // RETAIN
            next += 1;
            sent += 1;
        }
        if !out.is_empty() {
            s.stream.write_all(&out).await.context("writing PUBLISH")?;
            out.clear();
        }
        while let Some((packet, used)) = mqtt::decode(&s.read_buf, version)? {
            if matches!(packet, Packet::PubAck { .. }) {
                acked += 1;
            }
            let _ = s.read_buf.split_to(used);
        }
        let waiting = acked < total && (sent - acked >= window || next >= range.end);
        if waiting
            && s.stream
                .read_buf(&mut s.read_buf)
                .await
                .context("reading PUBACK")?
                == 0
        {
            bail!("closed with {} PUBACKs missing", total - acked);
        }
    }
    Ok(())
}

/// Subscribes `count` filters `{prefix}/f/{session}/{j}/#`, each SUBSCRIBE its own packet, the SUBACKs read as
/// they come.
async fn subscribe_many(
    s: &mut Session,
    version: mqtt::Version,
    prefix: &str,
    session: usize,
    count: usize,
) -> anyhow::Result<()> {
    let mut out = BytesMut::with_capacity(64 * 1024);
    for j in 0..count {
        let id = (j % 65_535 + 1) as u16;
        mqtt::encode_subscribe(
            &mut out,
            version,
            id,
            &format!("{prefix}/f/{session}/{j}/#"),
            0,
        );
    }
    s.stream
        .write_all(&out)
        .await
        .context("writing SUBSCRIBE")?;
    let mut acked = 0;
    while acked < count {
        match mqtt::decode(&s.read_buf, version)? {
            Some((packet, used)) => {
                if let Packet::SubAck { code, .. } = packet {
                    if code >= 0x80 {
                        bail!("SUBACK refused with {code:#04x}");
                    }
                    acked += 1;
                }
                let _ = s.read_buf.split_to(used);
            }
            None => {
                if s.stream
                    .read_buf(&mut s.read_buf)
                    .await
                    .context("reading SUBACK")?
                    == 0
                {
                    bail!("closed before every SUBACK");
                }
            }
        }
    }
    Ok(())
}

/// Options of `pairs-check`.
#[derive(Debug, clap::Args)]
pub struct PairsArgs {
    /// Node addresses.
    #[arg(long, value_delimiter = ',', required = true)]
    pub nodes: Vec<SocketAddr>,
    #[command(flatten)]
    pub link: LinkArgs,
    /// Give up after this long.
    #[arg(long, default_value = "30s", value_parser = fleetgate_config::duration::parse_duration)]
    pub timeout: Duration,
    /// Free-form label copied into the JSON line.
    #[arg(long)]
    pub label: Option<String>,
}

/// Runs `pairs-check`: the time until every ordered pair of nodes delivered one message.
pub async fn pairs_check(args: PairsArgs) -> anyhow::Result<serde_json::Value> {
    let start = Instant::now();
    let run = format!("{:x}", stats::now_ns());
    let n = args.nodes.len();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        for j in (0..n).filter(|j| *j != i) {
            let sub_target = Target::new(args.nodes[i], &args.link)?;
            let pub_target = Target::new(args.nodes[j], &args.link)?;
            let topic = format!("pairs/{run}/{i}/{j}");
            let deadline = start + args.timeout;
            tasks.spawn(async move {
                let took = one_pair(&sub_target, &pub_target, &topic, deadline).await;
                (i, j, took)
            });
        }
    }
    let mut pairs = Vec::new();
    let mut slowest = 0f64;
    let mut failed = 0;
    while let Some(done) = tasks.join_next().await {
        let (i, j, took) = done.context("pair task")?;
        match took {
            Ok(s) => {
                slowest = slowest.max(s);
                pairs.push(serde_json::json!({"sub": i, "pub": j, "s": s}));
            }
            Err(e) => {
                failed += 1;
                net::warn(&format!("pair {j}->{i}: {e:#}"));
                pairs.push(serde_json::json!({"sub": i, "pub": j, "error": format!("{e:#}")}));
            }
        }
    }
    Ok(serde_json::json!({
        "cmd": "pairs-check",
        "label": args.label,
        "all_delivered_s": (failed == 0).then_some(slowest),
        "failed": failed,
        "pairs": pairs,
    }))
}

/// Subscribes on `sub`, then publishes on `pub_` every [`RETRY`] until the subscriber got one; the seconds that
/// took, from the call.
async fn one_pair(
    sub: &Target,
    pub_: &Target,
    topic: &str,
    deadline: Instant,
) -> anyhow::Result<f64> {
    let start = Instant::now();
    let id = topic.replace('/', "-");
    let (sub_id, pub_id) = (format!("{id}-s"), format!("{id}-p"));
    let mut s = retry_until(deadline, || net::connect(sub, &sub_id, 30)).await?;
    net::subscribe(&mut s, sub.version, topic, 0).await?;
    let mut p = retry_until(deadline, || net::connect(pub_, &pub_id, 30)).await?;
    let mut out = BytesMut::with_capacity(64);
    loop {
        out.clear();
        mqtt::encode_publish(&mut out, pub_.version, topic, 0, 0, 1, |b| {
            b.extend_from_slice(b"x")
        });
        p.stream.write_all(&out).await.context("publishing")?;
        if net::await_publish(&mut s, sub.version, RETRY).await? {
            net::close(s).await;
            net::close(p).await;
            return Ok(start.elapsed().as_secs_f64());
        }
        if Instant::now() >= deadline {
            bail!("nothing delivered before the deadline");
        }
    }
}

/// Retries `connect` (a node just thawed or restarted may refuse for a moment) until it works or `deadline`.
async fn retry_until<F, Fut>(deadline: Instant, mut connect: F) -> anyhow::Result<Session>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Session>>,
{
    loop {
        match connect().await {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(RETRY).await,
        }
    }
}
