//! `fleetgate-bench`: the load generator behind `bench/run`. Every measuring subcommand prints one JSON line on
//! stdout; diagnostics go to stderr.
//!
//! - [`mqtt`]: the generator's own minimal MQTT client codec.
//! - [`proxy_v2`]: the minimal PROXY v2 header for `--proxy-v2`.
//! - [`net`]: connect → PROXY → TLS → CONNECT/CONNACK, plain or TLS stream.
//! - [`throughput`]: publishers → broker → subscribers, paced or unbounded, with end-to-end latency.
//! - [`load`]: the per-connection loops of `throughput` (subscriber, publisher, PUBACK reader, flow control).
//! - [`connect_rate`]: full TLS + MQTT connection set-ups per second.
//! - [`idle`]: many idle sessions held open while the script samples server memory.
//! - [`certs`]: a throwaway ECDSA P-256 PKI.
//! - [`stats`]: latency histograms, the shared clock, own CPU time.

mod certs;
mod connect_rate;
mod idle;
mod load;
mod mqtt;
mod net;
mod proxy_v2;
mod stats;
mod throughput;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

/// Fleetgate load generator.
#[derive(Debug, Parser)]
#[command(name = "fleetgate-bench", version)]
struct Cli {
    /// Runtime worker threads (the generator shares the machine's cores with the server under test).
    #[arg(long, global = true, default_value_t = 1)]
    threads: usize,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Publish/subscribe throughput and end-to-end latency.
    Throughput(throughput::ThroughputArgs),
    /// Connection set-ups (TLS handshake + CONNECT/CONNACK) per second.
    ConnectRate(connect_rate::ConnectRateArgs),
    /// Hold many idle sessions.
    Idle(idle::IdleArgs),
    /// Write a throwaway CA, server and client certificates into DIR.
    GenCerts {
        /// Output directory.
        dir: PathBuf,
    },
    /// Print a free TCP port on 127.0.0.1.
    FreePort,
    /// Wait until ADDR accepts TCP connections.
    WaitPort {
        /// Address to probe.
        addr: SocketAddr,
        /// Give up after this long.
        #[arg(long, default_value = "15s", value_parser = parse_duration)]
        timeout: Duration,
    },
}

/// Interval between probes of `wait-port`.
const WAIT_PORT_POLL: Duration = Duration::from_millis(50);

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = if cli.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cli.threads)
            .enable_all()
            .build()?
    };
    runtime
        .block_on(async {
            let line = match cli.command {
                Command::Throughput(args) => throughput::run(args).await?,
                Command::ConnectRate(args) => connect_rate::run(args).await?,
                Command::Idle(args) => idle::run(args).await?,
                Command::GenCerts { dir } => {
                    certs::generate(&dir)?;
                    return Ok(());
                }
                Command::FreePort => {
                    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
                    println!("{}", listener.local_addr()?.port());
                    return Ok(());
                }
                Command::WaitPort { addr, timeout } => {
                    let deadline = Instant::now() + timeout;
                    while tokio::net::TcpStream::connect(addr).await.is_err() {
                        if Instant::now() >= deadline {
                            bail!("{addr} did not accept connections within {timeout:?}");
                        }
                        tokio::time::sleep(WAIT_PORT_POLL).await;
                    }
                    return Ok(());
                }
            };
            println!("{line}");
            Ok::<_, anyhow::Error>(())
        })
        .context("fleetgate-bench")
}

/// Parses `10s`, `500ms`, `2m` or a bare number of seconds.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let (number, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(at) => s.split_at(at),
        None => (s, "s"),
    };
    let value: f64 = number.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("bad duration unit in {s:?} (use ms, s or m)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("bad duration {s:?}: {e}"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (CONTRIBUTING)
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("3h").is_err());
        assert!(parse_duration("x").is_err());
    }
}
