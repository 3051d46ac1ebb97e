//! `throughput`: publishers → broker → subscribers with end-to-end latency. Subscribers connect and subscribe first;
//! publishers then send for `--duration` at a paced total rate (open loop: a publisher that falls behind catches up)
//! or as fast as the server delivers (closed loop: at most `--outstanding` deliveries per subscriber in flight; QoS 1
//! also at most `--inflight` unacknowledged PUBLISH per connection). Each
//! payload starts with the send time (ns on the shared clock) and a sequence number; subscribers record the latency.
//! After publishing stops, the run waits until every expected message arrived or `--drain` ran out, then prints one
//! JSON line. With `--sub-target` subscribers connect to another node of a cluster (cross-node delivery).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::sync::watch;

use crate::load::{DRAIN_POLL, Flow, PubConfig, STAMP_LEN, Tally, publisher, subscriber};
use crate::net::{self, LinkArgs, Target};
use crate::placement;
use crate::stats::{self, Latency};

/// Keep-alive announced by load clients: longer than any run, so no PINGREQ traffic is needed.
pub(crate) const KEEP_ALIVE_S: u16 = 300;
/// Handshakes in flight while the run's connections are opened.
const CONNECT_CONCURRENCY: usize = 64;

/// Who publishes to whom.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pattern {
    /// Publisher i → topic `in/i`; every subscriber subscribes `in/+` and gets everything.
    FanIn,
    /// Every publisher → one topic; every subscriber gets everything.
    FanOut,
    /// Publisher i → topic `pair/i` ← subscriber i (needs as many subscribers as publishers).
    Pairs,
}

/// Offered total publish rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rate {
    /// Messages per second across all publishers.
    PerSecond(f64),
    /// As fast as the server takes them.
    Unbounded,
}

/// Parses `unbounded` or a positive number of messages per second (`20000`, `20k`).
pub fn parse_rate(s: &str) -> Result<Rate, String> {
    if s == "unbounded" || s == "max" {
        return Ok(Rate::Unbounded);
    }
    let (digits, scale) = match s.strip_suffix('k') {
        Some(d) => (d, 1000.0),
        None => (s, 1.0),
    };
    match digits.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(Rate::PerSecond(v * scale)),
        _ => Err(format!(
            "rate must be a positive number or 'unbounded', got {s:?}"
        )),
    }
}

/// Options of `throughput`.
#[derive(Debug, clap::Args)]
pub struct ThroughputArgs {
    /// Broker or balancer address (publishers, and subscribers unless `--sub-target`).
    #[arg(long)]
    pub target: SocketAddr,
    /// Subscribers connect here instead (another node of the same cluster: cross-node delivery). Before
    /// measuring, every subscriber must receive a probe from its publisher, so the run starts with the
    /// subscriptions known cluster-wide.
    #[arg(long)]
    pub sub_target: Option<SocketAddr>,
    #[command(flatten)]
    pub link: LinkArgs,
    /// Topic pattern.
    #[arg(long, value_enum)]
    pub pattern: Pattern,
    /// Publisher connections.
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    /// Subscriber connections.
    #[arg(long, default_value_t = 1)]
    pub subscribers: usize,
    /// QoS of PUBLISH and SUBSCRIBE.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub qos: u8,
    /// Payload size in bytes (at least 16).
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// Offered total publish rate (msgs/s, `20k` works) or `unbounded` (closed loop, see `--outstanding`).
    #[arg(long, default_value = "unbounded", value_parser = parse_rate)]
    pub rate: Rate,
    /// How long publishers send.
    #[arg(long, default_value = "10s", value_parser = fleetgate_config::duration::parse_duration)]
    pub duration: Duration,
    /// `--rate unbounded`: publishers pause while more than this many deliveries per subscriber are published but
    /// not yet received, so "unbounded" measures the most the server delivers, not how big a backlog it can hold.
    #[arg(long, default_value_t = 500)]
    pub outstanding: u64,
    /// QoS 1: unacknowledged PUBLISH per publisher connection.
    #[arg(long, default_value_t = 32)]
    pub inflight: usize,
    /// Longest wait for outstanding deliveries after publishing stops.
    #[arg(long, default_value = "5s", value_parser = fleetgate_config::duration::parse_duration)]
    pub drain: Duration,
    /// Pairs behind a balancer in front of unclustered nodes: retry each publisher's client ID until a probe it
    /// publishes reaches its subscriber, i.e. until the balancer put both on the same node.
    #[arg(long)]
    pub colocate: bool,
    /// Free-form label copied into the JSON line.
    #[arg(long)]
    pub label: Option<String>,
}

/// Topics, filters and fan-out of one run.
pub(crate) struct Plan {
    /// Topic of each publisher.
    pub(crate) topics: Vec<String>,
    /// Filter of each subscriber.
    pub(crate) filters: Vec<String>,
    /// Subscribers that receive each publisher's messages.
    pub(crate) fanout: Vec<u64>,
    /// The pattern (which publisher reaches which subscriber).
    pub(crate) pattern: Pattern,
}

fn plan(args: &ThroughputArgs, run: &str) -> anyhow::Result<Plan> {
    let (n, m) = (args.publishers, args.subscribers);
    let m64 = m as u64;
    Ok(match args.pattern {
        Pattern::FanIn => Plan {
            topics: (0..n).map(|i| format!("fgb/{run}/in/{i}")).collect(),
            filters: vec![format!("fgb/{run}/in/+"); m],
            fanout: vec![m64; n],
            pattern: args.pattern,
        },
        Pattern::FanOut => Plan {
            topics: vec![format!("fgb/{run}/out"); n],
            filters: vec![format!("fgb/{run}/out"); m],
            fanout: vec![m64; n],
            pattern: args.pattern,
        },
        Pattern::Pairs => {
            if n != m {
                bail!("--pattern pairs needs as many subscribers as publishers ({n} != {m})");
            }
            let topics: Vec<String> = (0..n).map(|i| format!("fgb/{run}/pair/{i}")).collect();
            Plan {
                filters: topics.clone(),
                topics,
                fanout: vec![1; n],
                pattern: args.pattern,
            }
        }
    })
}

/// Runs `throughput` and returns its JSON line.
pub async fn run(args: ThroughputArgs) -> anyhow::Result<serde_json::Value> {
    if args.payload < STAMP_LEN {
        bail!("--payload must be at least {STAMP_LEN} bytes");
    }
    if args.publishers == 0 || args.subscribers == 0 {
        bail!("need at least one publisher and one subscriber");
    }
    let cpu_before = stats::own_cpu_seconds();
    let _ = stats::now_ns();
    let run_id = format!(
        "{:x}{:x}",
        std::process::id(),
        stats::now_ns() ^ wall_nanos()
    );
    let plan = plan(&args, &run_id)?;
    let target = Arc::new(Target::new(args.target, &args.link)?);
    let sub_target = match args.sub_target {
        Some(addr) => Arc::new(Target::new(addr, &args.link)?),
        None => Arc::clone(&target),
    };

    // Subscribers first, so nothing published is missed.
    let sub_ids = (0..args.subscribers)
        .map(|i| format!("fgb-{run_id}-s{i}"))
        .collect();
    let mut subs = Vec::new();
    for (i, session) in net::connect_all(&sub_target, sub_ids, KEEP_ALIVE_S, CONNECT_CONCURRENCY)
        .await
        .into_iter()
        .enumerate()
    {
        let mut session = session.with_context(|| format!("subscriber {i}"))?;
        net::subscribe(&mut session, args.link.mqtt, &plan.filters[i], args.qos)
            .await
            .with_context(|| format!("subscriber {i}"))?;
        subs.push(session);
    }
    let mut pubs = Vec::new();
    let mut colocate_tries = 0;
    if args.colocate {
        if args.pattern != Pattern::Pairs || args.sub_target.is_some() {
            bail!("--colocate works with --pattern pairs and without --sub-target only");
        }
        (subs, pubs, colocate_tries) = placement::colocate(&target, &run_id, &plan, subs).await?;
    } else {
        let pub_ids = (0..args.publishers)
            .map(|i| format!("fgb-{run_id}-p{i}"))
            .collect();
        for (i, session) in net::connect_all(&target, pub_ids, KEEP_ALIVE_S, CONNECT_CONCURRENCY)
            .await
            .into_iter()
            .enumerate()
        {
            pubs.push(session.with_context(|| format!("publisher {i}"))?);
        }
    }
    let route_markers = match args.sub_target {
        Some(_) => {
            Some(placement::await_routes(&plan, &mut pubs, &mut subs, args.link.mqtt).await?)
        }
        None => None,
    };

    // Flow groups: publishers and the subscribers they reach. With pairs each pair is its own group, so the
    // window is per subscriber as `--outstanding` says (one shared window let a few publishers run far ahead of
    // their subscribers and overflow the server's per-session queues); in fan-in and fan-out every publisher
    // reaches every subscriber, so one group is already per subscriber.
    let groups = if plan.pattern == Pattern::Pairs {
        args.publishers
    } else {
        1
    };
    let subscribers_per_group = if groups > 1 {
        1
    } else {
        args.subscribers as u64
    };
    let tallies: Vec<Arc<Tally>> = (0..groups).map(|_| Arc::default()).collect();
    let (stop_tx, stop_rx) = watch::channel(false);
    let sub_tasks: Vec<_> = subs
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            tokio::spawn(subscriber(
                s,
                args.link.mqtt,
                Arc::clone(&tallies[i % groups]),
                stop_rx.clone(),
            ))
        })
        .collect();

    let flows: Option<Vec<Arc<Flow>>> = (args.rate == Rate::Unbounded).then(|| {
        tallies
            .iter()
            .map(|t| {
                Arc::new(Flow::new(
                    Arc::clone(t),
                    args.outstanding.max(1) * subscribers_per_group,
                ))
            })
            .collect()
    });
    let start = Instant::now();
    let per_pub_rate = match args.rate {
        Rate::PerSecond(r) => Some(r / args.publishers as f64),
        Rate::Unbounded => None,
    };
    let pub_tasks: Vec<_> = pubs
        .into_iter()
        .enumerate()
        .map(|(i, session)| {
            let cfg = PubConfig {
                index: i as u64,
                topic: plan.topics[i].clone(),
                version: args.link.mqtt,
                qos: args.qos,
                payload: args.payload,
                inflight: args.inflight.max(1),
                rate: per_pub_rate,
                flow: flows.as_ref().map(|f| Arc::clone(&f[i % groups])),
                fanout: plan.fanout[i],
                // Spread paced publishers' send instants evenly over one interval.
                phase: per_pub_rate.map_or(Duration::ZERO, |r| {
                    Duration::from_secs_f64(i as f64 / args.publishers as f64 / r)
                }),
                start,
                end: start + args.duration,
                drain_deadline: start + args.duration + args.drain,
            };
            tokio::spawn(publisher(session, cfg))
        })
        .collect();

    let mut sent_total = 0u64;
    let mut expected = 0u64;
    let mut errors = Vec::new();
    let mut writers = Vec::new();
    for (i, task) in pub_tasks.into_iter().enumerate() {
        let result = task.await.context("publisher task panicked")?;
        sent_total += result.sent;
        expected += result.sent * plan.fanout[i];
        errors.extend(result.error.map(|e| format!("publisher {i}: {e}")));
        writers.push((result.writer, result.reader));
    }
    let publish_elapsed = start.elapsed();

    let drain_deadline = Instant::now() + args.drain;
    // Done once every delivery arrived or is known lost (nothing more of it will come).
    let accounted = || {
        tallies
            .iter()
            .map(|t| t.received.load(Ordering::Relaxed) + t.skipped.load(Ordering::Relaxed))
            .sum::<u64>()
    };
    while accounted() < expected && Instant::now() < drain_deadline {
        tokio::time::sleep(DRAIN_POLL).await;
    }
    let _ = stop_tx.send(true);

    let mut latency = Latency::new();
    let (mut received_total, mut skipped, mut foreign, mut last_rx_ns) = (0u64, 0u64, 0u64, 0u64);
    for (i, task) in sub_tasks.into_iter().enumerate() {
        let r = task.await.context("subscriber task panicked")?;
        received_total += r.received;
        skipped += r.skipped;
        foreign += r.foreign;
        last_rx_ns = last_rx_ns.max(r.last_rx_ns);
        latency.merge(&r.latency);
        errors.extend(r.error.map(|e| format!("subscriber {i}: {e}")));
    }
    for (mut writer, reader) in writers {
        net::disconnect(&mut writer).await;
        reader.abort();
    }

    let start_ns = u64::try_from(start.duration_since(stats::epoch()).as_nanos()).unwrap_or(0);
    // Delivered rate over the window from the first publish to the last delivery.
    let delivery_window =
        Duration::from_nanos(last_rx_ns.saturating_sub(start_ns)).max(publish_elapsed);
    let secs = delivery_window.as_secs_f64().max(1e-9);
    let loss = expected as i64 - received_total as i64;
    let mut out = serde_json::json!({
        "cmd": "throughput",
        "label": args.label,
        "target": args.target.to_string(),
        "sub_target": args.sub_target.map(|a| a.to_string()),
        "mqtt": args.link.mqtt,
        "tls": args.link.tls.tls,
        "pattern": args.pattern,
        "publishers": args.publishers,
        "subscribers": args.subscribers,
        "qos": args.qos,
        "payload": args.payload,
        "offered_rate": match args.rate { Rate::PerSecond(r) => Some(r), Rate::Unbounded => None },
        "duration_s": args.duration.as_secs_f64(),
        "publish_s": publish_elapsed.as_secs_f64(),
        "sent": sent_total,
        "sent_per_s": sent_total as f64 / publish_elapsed.as_secs_f64().max(1e-9),
        "expected": expected,
        "received": received_total,
        "loss": loss,
        "sequence_gaps": skipped,
        "loss_pct": if expected > 0 { 100.0 * loss as f64 / expected as f64 } else { 0.0 },
        "delivered_per_s": received_total as f64 / secs,
        "foreign": foreign,
        "colocate_tries": colocate_tries,
        "route_probes": route_markers,
        "flow_groups": flows.as_ref().map(Vec::len),
        "outstanding_limit": flows.as_ref().map(|f| f.iter().map(|f| f.limit).sum::<u64>()),
        "written_off": flows.as_ref().map(|f| f.iter().map(|f| f.write_offs().0).sum::<u64>()),
        "stalls": flows.as_ref().map(|f| f.iter().map(|f| f.write_offs().1).sum::<u64>()),
        "latency_samples": latency.count(),
        "errors": errors.iter().take(5).collect::<Vec<_>>(),
        "error_count": errors.len(),
    });
    stats::extend(&mut out, latency.summary());
    stats::extend_generator_cpu(&mut out, cpu_before);
    Ok(out)
}

fn wall_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(0))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (CONTRIBUTING)
mod tests {
    use super::*;

    #[test]
    fn rates_parse() {
        assert_eq!(parse_rate("unbounded"), Ok(Rate::Unbounded));
        assert_eq!(parse_rate("20k"), Ok(Rate::PerSecond(20_000.0)));
        assert_eq!(parse_rate("1500"), Ok(Rate::PerSecond(1500.0)));
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("fast").is_err());
    }
}
