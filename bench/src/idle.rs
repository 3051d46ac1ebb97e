//! `idle`: opens many MQTT sessions (keep-alive 300 s), prints a `ready` JSON line once all are up so a script can
//! sample the server's memory, holds them for `--hold`, checks each still answers PINGREQ, then closes them politely and prints the result line.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::net::{self, LinkArgs, Target};
use crate::stats;

/// Keep-alive announced by idle clients: longer than any hold, so they stay silent.
const KEEP_ALIVE_S: u16 = 300;
/// Closes in flight at the end of the hold.
const CLOSE_CONCURRENCY: usize = 256;

/// Options of `idle`.
#[derive(Debug, clap::Args)]
pub struct IdleArgs {
    /// Broker or balancer address.
    #[arg(long)]
    pub target: SocketAddr,
    #[command(flatten)]
    pub link: LinkArgs,
    /// Sessions to open. Each needs one file descriptor here (the process limit is 20,000).
    #[arg(long, default_value_t = 9000)]
    pub connections: usize,
    /// Set-ups in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// How long to hold the sessions once all are up.
    #[arg(long, default_value = "10s", value_parser = fleetgate_config::duration::parse_duration)]
    pub hold: Duration,
    /// Also create this file once all sessions are up (the `ready` line goes to stdout either way).
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
    /// Prefix of client IDs (two generator processes must differ).
    #[arg(long, default_value = "idle")]
    pub id_prefix: String,
    /// Free-form label copied into the JSON line.
    #[arg(long)]
    pub label: Option<String>,
}

/// Runs `idle` and returns its final JSON line.
pub async fn run(args: IdleArgs) -> anyhow::Result<serde_json::Value> {
    let target = Arc::new(Target::new(args.target, &args.link)?);
    let run_id = format!("{:x}", std::process::id() as u64 ^ stats::now_ns());
    let ids = (0..args.connections)
        .map(|i| format!("fgb-{}-{run_id}-{i}", args.id_prefix))
        .collect();
    let start = Instant::now();
    let results = net::connect_all(&target, ids, KEEP_ALIVE_S, args.concurrency).await;
    let connect_s = start.elapsed().as_secs_f64();
    let mut sessions = Vec::with_capacity(results.len());
    let (mut failed, mut first_error) = (0u64, None);
    for r in results {
        match r {
            Ok(s) => sessions.push(s),
            Err(e) => {
                failed += 1;
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    let ok = sessions.len();
    let ready =
        serde_json::json!({ "event": "ready", "ok": ok, "failed": failed, "connect_s": connect_s });
    {
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{ready}");
        let _ = stdout.flush();
    }
    if let Some(path) = &args.ready_file {
        std::fs::write(path, format!("{ready}\n"))?;
    }
    tokio::time::sleep(args.hold).await;

    let permits = Arc::new(tokio::sync::Semaphore::new(CLOSE_CONCURRENCY));
    let mut closing = tokio::task::JoinSet::new();
    let version = args.link.mqtt;
    for mut s in sessions {
        let permits = Arc::clone(&permits);
        closing.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let alive = net::ping(&mut s, version).await;
            net::close(s).await;
            alive
        });
    }
    let mut alive_after_hold = 0u64;
    while let Some(joined) = closing.join_next().await {
        alive_after_hold += u64::from(joined.unwrap_or(false));
    }
    Ok(serde_json::json!({
        "cmd": "idle",
        "label": args.label,
        "target": args.target.to_string(),
        "tls": args.link.tls.tls,
        "connections": args.connections,
        "ok": ok,
        "failed": failed,
        "first_error": first_error,
        "connect_s": connect_s,
        "connect_per_s": ok as f64 / connect_s.max(1e-9),
        "hold_s": args.hold.as_secs_f64(),
        "alive_after_hold": alive_after_hold,
    }))
}
