//! `fleetgate-bench`: the load generator behind `bench/run`. Every measuring subcommand prints one JSON line on
//! stdout; diagnostics go to stderr.
//!
//! - [`mqtt`]: the generator's own minimal MQTT client codec.
//! - [`net`]: connect → PROXY → TLS → CONNECT/CONNACK, plain or TLS stream.
//! - [`throughput`]: publishers → broker → subscribers, paced or unbounded, with end-to-end latency.
//! - [`placement`]: markers before measuring that place publishers (`--colocate`) or await routes (`--sub-target`).
//! - [`load`]: the per-connection loops of `throughput` (subscriber, publisher, PUBACK reader, flow control).
//! - [`connect_rate`]: full TLS + MQTT connection set-ups per second.
//! - [`idle`]: many idle sessions held open while the script samples server memory.
//! - [`sessions`]: persistent sessions with queued messages (`bench/run durable`)
//! - [`scale`]: cluster state at fleet scale (`fill`: retained messages and held filters) and `pairs-check`
//!   (when every ordered pair of nodes delivers).
//! - [`store`]: the candidate session stores (redb, fjall) under the node's durable-session workload: group commit,
//!   recovery, disk space, torn writes (issue 15).
//! - [`certs`]: a throwaway ECDSA P-256 PKI.
//! - [`stats`]: latency histograms, the shared clock, own CPU time.

mod certs;
mod connect_rate;
mod idle;
mod load;
mod mqtt;
mod net;
mod placement;
mod scale;
mod sessions;
mod stats;
mod store;
mod throughput;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use fleetgate_config::duration::parse_duration;

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
    /// Publish retained messages and hold subscription filters (cluster state at scale).
    Fill(scale::FillArgs),
    /// Time until every ordered pair of nodes delivers a message.
    PairsCheck(scale::PairsArgs),
    /// Create persistent sessions and queue messages for them (durable storage).
    Sessions(sessions::SessionsArgs),
    /// Compare the embedded session stores (redb, fjall): group commit, recovery, disk space, torn writes.
    Store(store::StoreArgs),
    /// One measurement of `store`, in a process of its own (started by `store`).
    #[command(hide = true)]
    StoreWorker(store::WorkerArgs),
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
    // The store comparison is synchronous (a blocking writer thread, as the node's will be) and starts processes.
    let command = match cli.command {
        Command::Store(args) => {
            println!("{}", store::run(args)?);
            return Ok(());
        }
        Command::StoreWorker(args) => return store::worker(args),
        other => other,
    };
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
            let line = match command {
                Command::Throughput(args) => throughput::run(args).await?,
                Command::ConnectRate(args) => connect_rate::run(args).await?,
                Command::Idle(args) => idle::run(args).await?,
                Command::Fill(args) => scale::fill(args).await?,
                Command::PairsCheck(args) => scale::pairs_check(args).await?,
                Command::Sessions(args) => sessions::run(args).await?,
                Command::Store(_) | Command::StoreWorker(_) => {
                    bail!("store commands run before the runtime starts")
                }
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
