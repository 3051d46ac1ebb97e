//! `connect-rate`: full connection set-ups per second (TCP → optional PROXY v2 → TLS without resumption →
//! CONNECT → CONNACK), each followed by DISCONNECT, with `--concurrency` set-ups in flight.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::Context as _;

use crate::net::{self, LinkArgs, Target};
use crate::stats::{self, Latency};

/// Keep-alive of the short-lived connections.
const KEEP_ALIVE_S: u16 = 60;

/// Options of `connect-rate`.
#[derive(Debug, clap::Args)]
pub struct ConnectRateArgs {
    /// Broker or balancer address.
    #[arg(long)]
    pub target: SocketAddr,
    #[command(flatten)]
    pub link: LinkArgs,
    /// Connections to open in total.
    #[arg(long, default_value_t = 2000)]
    pub connections: usize,
    /// Set-ups in flight at once.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Free-form label copied into the JSON line.
    #[arg(long)]
    pub label: Option<String>,
}

struct WorkerResult {
    ok: u64,
    failed: u64,
    first_error: Option<String>,
    latency: Latency,
}

/// Runs `connect-rate` and returns its JSON line.
pub async fn run(args: ConnectRateArgs) -> anyhow::Result<serde_json::Value> {
    let cpu_before = stats::own_cpu_seconds();
    let target = Arc::new(Target::new(args.target, &args.link)?);
    let run_id = format!("{:x}", std::process::id() as u64 ^ stats::now_ns());
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency.max(1) {
        let (target, next, run_id) = (Arc::clone(&target), Arc::clone(&next), run_id.clone());
        let total = args.connections;
        workers.spawn(async move {
            let mut r = WorkerResult {
                ok: 0,
                failed: 0,
                first_error: None,
                latency: Latency::new(),
            };
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return r;
                }
                let began = Instant::now();
                match net::connect(&target, &format!("fgb-{run_id}-c{i}"), KEEP_ALIVE_S).await {
                    Ok(session) => {
                        r.latency.record(began.elapsed());
                        r.ok += 1;
                        net::close(session).await;
                    }
                    Err(e) => {
                        r.failed += 1;
                        r.first_error.get_or_insert_with(|| format!("{e:#}"));
                    }
                }
            }
        });
    }
    let mut latency = Latency::new();
    let (mut ok, mut failed, mut first_error) = (0u64, 0u64, None);
    while let Some(joined) = workers.join_next().await {
        let r = joined.context("connect worker panicked")?;
        ok += r.ok;
        failed += r.failed;
        first_error = first_error.or(r.first_error);
        latency.merge(&r.latency);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let mut out = serde_json::json!({
        "cmd": "connect-rate",
        "label": args.label,
        "target": args.target.to_string(),
        "tls": args.link.tls.tls,
        "mqtt": args.link.mqtt,
        "connections": args.connections,
        "concurrency": args.concurrency,
        "ok": ok,
        "failed": failed,
        "first_error": first_error,
        "elapsed_s": elapsed,
        "per_s": ok as f64 / elapsed.max(1e-9),
    });
    stats::extend(&mut out, latency.summary());
    stats::extend_generator_cpu(&mut out, cpu_before);
    Ok(out)
}
