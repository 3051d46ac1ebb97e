//! `sessions`: persistent sessions with messages waiting for them, for `bench/run durable` — `--sessions` clients
//! (IDs `fgb-{prefix}-{i}`) each connect without clean start (`--persistent` is implied), subscribe to
//! `{prefix}/all` at QoS 1 and leave; then `--messages` QoS 1 publishes on that topic queue one message per
//! session each (what a node with `[storage] mode = "disk"` holds on disk). Reports how long each step took.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context as _, bail};
use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use crate::mqtt::{self, Packet};
use crate::net::{self, LinkArgs, Target};

/// Keep alive of the sessions: they leave at once.
const KEEP_ALIVE_S: u16 = 60;

/// Options of `sessions`.
#[derive(Debug, clap::Args)]
pub struct SessionsArgs {
    /// Node address.
    #[arg(long)]
    pub target: SocketAddr,
    #[command(flatten)]
    pub link: LinkArgs,
    /// Persistent sessions to create.
    #[arg(long, default_value_t = 1000)]
    pub sessions: usize,
    /// Set-ups in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// QoS 1 messages to publish on `{prefix}/all` once every session left (each queues one per session).
    #[arg(long, default_value_t = 0)]
    pub messages: usize,
    /// Payload bytes of each message.
    #[arg(long, default_value_t = 64)]
    pub payload_bytes: usize,
    /// Topic and client ID prefix.
    #[arg(long, default_value = "durable")]
    pub prefix: String,
}

/// Runs `sessions` and returns its JSON line.
pub async fn run(mut args: SessionsArgs) -> anyhow::Result<serde_json::Value> {
    args.link.persistent = true;
    let target = Arc::new(Target::new(args.target, &args.link)?);
    let topic = format!("{}/all", args.prefix);
    let start = Instant::now();
    let permits = Arc::new(tokio::sync::Semaphore::new(args.concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..args.sessions {
        let (target, permits, topic) = (Arc::clone(&target), Arc::clone(&permits), topic.clone());
        let id = format!("fgb-{}-{i}", args.prefix);
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let mut s = net::connect(&target, &id, KEEP_ALIVE_S).await?;
            net::subscribe(&mut s, target.version, &topic, 1).await?;
            net::close(s).await;
            Ok::<_, anyhow::Error>(())
        });
    }
    let mut failed = 0usize;
    while let Some(joined) = tasks.join_next().await {
        if !matches!(joined, Ok(Ok(()))) {
            failed += 1;
        }
    }
    if failed > 0 {
        bail!("{failed} of {} sessions could not be set up", args.sessions);
    }
    let sessions_s = start.elapsed().as_secs_f64();
    let published = Instant::now();
    if args.messages > 0 {
        // The publisher is a clean session of its own.
        let mut link = args.link.clone();
        link.persistent = false;
        let publisher = Target::new(args.target, &link)?;
        let mut s = net::connect(
            &publisher,
            &format!("fgb-{}-pub", args.prefix),
            KEEP_ALIVE_S,
        )
        .await?;
        let mut out = BytesMut::new();
        for i in 0..args.messages {
            out.clear();
            let id = (i % 65_535 + 1) as u16;
            mqtt::encode_publish(
                &mut out,
                publisher.version,
                &topic,
                1,
                id,
                args.payload_bytes,
                |b| {
                    b.extend(std::iter::repeat_n(b'x', args.payload_bytes));
                },
            );
            s.stream.write_all(&out).await.context("writing PUBLISH")?;
            // One at a time: each fans out to every session, so the PUBACK is what paces the publisher.
            loop {
                if let Some((packet, used)) = mqtt::decode(&s.read_buf, publisher.version)? {
                    let acked = matches!(packet, Packet::PubAck { .. });
                    let _ = s.read_buf.split_to(used);
                    if acked {
                        break;
                    }
                    continue;
                }
                if tokio::io::AsyncReadExt::read_buf(&mut s.stream, &mut s.read_buf)
                    .await
                    .context("reading PUBACK")?
                    == 0
                {
                    bail!("closed before PUBACK {i}");
                }
            }
        }
        net::close(s).await;
    }
    Ok(serde_json::json!({
        "bench": "sessions",
        "sessions": args.sessions,
        "sessions_s": sessions_s,
        "messages": args.messages,
        "queued": args.messages * args.sessions,
        "publish_s": published.elapsed().as_secs_f64(),
    }))
}
