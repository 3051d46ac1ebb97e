//! `fleetgate up`: a complete local system with no set-up — a dev PKI, N broker nodes (each its own child process,
//! so each has its own metrics) and the load balancer in front of them, with instructions for connecting.
//!
//! Flow: PKI → for each node: write `node-N.toml` (its cluster peers: the nodes already running) → start it →
//! learn its ports from its `listening` log lines → wait until every node is ready and linked to all others
//! (one cluster) → write `lb.toml` with them as backends → start the LB → print how to connect → wait for Ctrl-C
//! or a child dying → SIGTERM every child, wait (bounded), exit.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use fleetgate_config::lb::LbConfig;
use fleetgate_config::node::NodeConfig;
use tokio_util::sync::CancellationToken;

use crate::children::{self, ChildProcess};
use crate::pki::{self, DevPki};

/// How long a child gets to report its listening sockets: a debug build on a busy machine starts in well under a
/// second, but the TLS provider and config loading must not be cut short.
const STARTUP_DEADLINE: Duration = Duration::from_secs(30);
/// How long children get to drain and exit after SIGTERM before they are killed: the nodes' default shutdown grace
/// (10 s) plus margin.
const STOP_GRACE: Duration = Duration::from_secs(15);
/// Largest number of nodes `up` starts: it is a development tool on one machine.
const MAX_NODES: u16 = 16;
/// Pause between readiness polls of the nodes: they sync with their peers within milliseconds on loopback.
const READY_POLL: Duration = Duration::from_millis(100);

/// `fleetgate up` options.
#[derive(Debug, Clone, clap::Args)]
pub struct UpArgs {
    /// Directory for the dev PKI, the generated configs (reused when present).
    #[arg(long, default_value = "./fleetgate-dev")]
    pub dir: PathBuf,
    /// Number of broker nodes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=i64::from(MAX_NODES)))]
    pub nodes: u16,
    /// Port for plain MQTT on 127.0.0.1.
    #[arg(long, default_value_t = 1883)]
    pub mqtt_port: u16,
    /// Port for MQTT over TLS on 127.0.0.1.
    #[arg(long, default_value_t = 8883)]
    pub mqtts_port: u16,
    /// Run the nodes only, without the load balancer: node 0 listens on `--mqtt-port` for plain MQTT without
    /// PROXY protocol (for debugging a node directly).
    #[arg(long)]
    pub no_lb: bool,
}

/// Runs the local system until `shutdown` is cancelled (Ctrl-C) or a child exits.
pub async fn run(args: UpArgs, shutdown: CancellationToken) -> Result<()> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let dir = args
        .dir
        .canonicalize()
        .with_context(|| format!("resolving {}", args.dir.display()))?;
    let (pki, fresh) = pki::ensure(&dir)?;
    tracing::info!(event = "dev_pki", dir = %dir.display(), fresh, "development PKI ready");

    let mut children: Vec<ChildProcess> = Vec::new();
    let result = start_and_wait(&args, &dir, &pki, &mut children, &shutdown).await;
    stop(&mut children).await;
    result
}

async fn start_and_wait(
    args: &UpArgs,
    dir: &Path,
    pki: &DevPki,
    children: &mut Vec<ChildProcess>,
    shutdown: &CancellationToken,
) -> Result<()> {
    let with_lb = !args.no_lb;
    // One node after another: each gets the cluster ports of those already running as its peers (they learn it
    // from its Hello and dial back), so no port is picked before it is bound.
    let mut peers: Vec<(String, SocketAddr)> = Vec::new();
    let mut nodes = Vec::new();
    let names: Vec<String> = (0..args.nodes).map(|i| format!("broker-{i}")).collect();
    // Mutual TLS on the cluster links, from a cluster CA made for this run.
    let cluster_pki = pki::cluster(dir, &names)?;
    for (i, (name, cert, key)) in cluster_pki.nodes.iter().enumerate() {
        let name = name.clone();
        let bind = if with_lb || i != 0 { 0 } else { args.mqtt_port };
        let path = dir.join(format!("node-{i}.toml"));
        let tls = ClusterTls {
            cert,
            key,
            ca: &cluster_pki.ca,
        };
        let store = dir.join(format!("{name}-store"));
        write_config(
            &path,
            &node_config(&name, bind, with_lb, &peers, &tls, &store),
        )?;
        NodeConfig::load(&path)
            .map_err(|e| anyhow::anyhow!("generated {} is invalid:\n{e}", path.display()))?;
        children.push(ChildProcess::spawn(&name, "node", &path)?);
        let Some(process) = children.last_mut() else {
            bail!("internal: {name} was not recorded");
        };
        let mqtt = process.wait_listening("mqtt", STARTUP_DEADLINE).await?;
        let admin = process.wait_listening("admin", STARTUP_DEADLINE).await?;
        let cluster = process.wait_listening("cluster", STARTUP_DEADLINE).await?;
        peers.push((name.clone(), cluster));
        nodes.push((name, mqtt, Some(admin)));
    }
    let admins: Vec<(String, SocketAddr)> = nodes
        .iter()
        .filter_map(|(n, _, a)| a.map(|a| (n.clone(), a)))
        .collect();
    tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        ready = wait_cluster(&admins, STARTUP_DEADLINE) => ready?,
    }

    let mut lb_addrs = None;
    if with_lb {
        let path = dir.join("lb.toml");
        let backends: Vec<(String, SocketAddr)> =
            nodes.iter().map(|(n, a, _)| (n.clone(), *a)).collect();
        write_config(&path, &lb_config(args, pki, &backends))?;
        LbConfig::load(&path)
            .map_err(|e| anyhow::anyhow!("generated {} is invalid:\n{e}", path.display()))?;
        let mut lb = ChildProcess::spawn("lb", "lb", &path)?;
        let mqtt = lb.wait_listening("mqtt", STARTUP_DEADLINE).await?;
        let mqtts = lb.wait_listening("mqtts", STARTUP_DEADLINE).await?;
        let admin = lb
            .wait_listening("admin", Duration::from_millis(500))
            .await
            .ok();
        children.push(lb);
        lb_addrs = Some((mqtt, mqtts, admin));
    }

    println!("{}", banner(dir, pki, &nodes, lb_addrs));

    // Run until Ctrl-C/SIGTERM, or until any child exits on its own (then the system is broken: stop everything).
    let died = {
        let exits = children.iter_mut().map(|c| {
            Box::pin(async move {
                let status = c.exited().await;
                (c.name.clone(), status)
            })
        });
        let any_exit = futures_select_all(exits.collect());
        tokio::select! {
            _ = shutdown.cancelled() => None,
            died = any_exit => Some(died),
        }
    };
    match died {
        None => Ok(()),
        Some((name, status)) => {
            let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
            bail!("{name} exited unexpectedly ({status}); stopping the others")
        }
    }
}

/// SIGTERM to every child at once, then wait for each (bounded, then SIGKILL).
async fn stop(children: &mut [ChildProcess]) {
    for child in children.iter() {
        child.terminate();
    }
    for child in children.iter_mut() {
        let how = child.wait_or_kill(STOP_GRACE).await;
        tracing::info!(event = "child_stopped", process = %child.name, status = %how, "child stopped");
    }
}

/// Resolves with the output of whichever future finishes first (a tiny `select_all`, to avoid a dependency).
async fn futures_select_all<F, T>(mut futures: Vec<std::pin::Pin<Box<F>>>) -> T
where
    F: std::future::Future<Output = T> + ?Sized,
{
    std::future::poll_fn(move |cx| {
        for f in futures.iter_mut() {
            if let std::task::Poll::Ready(out) = f.as_mut().poll(cx) {
                return std::task::Poll::Ready(out);
            }
        }
        std::task::Poll::Pending
    })
    .await
}

fn write_config(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// A TOML basic string for `s` (JSON string escapes are valid TOML).
fn quote(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

fn quote_path(p: &Path) -> String {
    quote(&p.to_string_lossy())
}

/// The cluster certificate, key and CA of one node.
struct ClusterTls<'a> {
    cert: &'a Path,
    key: &'a Path,
    ca: &'a Path,
}

/// The config of one node: MQTT on 127.0.0.1 behind the LB (PROXY v2 required from 127.0.0.1) or, without the LB,
/// plain MQTT on `port`; admin on a free port; a cluster port on a free port with mutual TLS (`tls`), dialing
/// `peers` (name, cluster address) — the nodes started before it.
///
/// Auth of the dev system: `anonymous = true` and no ACL file. Every client is admitted (a development system
/// must work with a bare `mosquitto_pub`); a client certificate verified by the LB is still carried as the
/// principal's CN, and the ACL is the crate's default without a file: every topic except `$` topics. A
/// production node lists policies (`certificate`, `client_id_from_cert`, `password`) and an `acl_file` instead.
///
/// PROXY trust: the nodes trust PROXY headers from `127.0.0.1`, the address the LB's connections come from — and
/// so does every local user's connection: anyone on this machine can send a node a header claiming any client
/// address and certificate. Harmless here (everyone is admitted anonymously and the ACL allows every topic, so a
/// forged identity gains nothing), but an `up` node must not be given certificate policies on a shared machine.
/// Giving the dev LB a loopback source address of its own (127.0.0.2) to trust instead needs an LB option to bind
/// its backend connections' source, which the LB does not have yet.
fn node_config(
    name: &str,
    port: u16,
    behind_lb: bool,
    peers: &[(String, SocketAddr)],
    tls: &ClusterTls<'_>,
    store: &Path,
) -> String {
    let proxy = if behind_lb {
        "proxy_protocol = \"required\"\ntrusted_proxies = [\"127.0.0.1/32\"]\n"
    } else {
        "proxy_protocol = \"off\"\n"
    };
    let peers: Vec<String> = peers
        .iter()
        .map(|(n, a)| {
            format!(
                "{{ name = {}, addr = {} }}",
                quote(n),
                quote(&a.to_string())
            )
        })
        .collect();
    format!(
        "# Generated by `fleetgate up`; rewritten on every start.\n\
         [node]\nname = {}\n\n[[listeners]]\nbind = \"127.0.0.1:{port}\"\n{proxy}\n[admin]\nbind = \"127.0.0.1:0\"\n\n\
         # One broker of N nodes: the nodes started before this one are its peers (they dial back).\n\
         [cluster]\nbind = \"127.0.0.1:0\"\npeers = [{}]\n\n\
         # Node-to-node links: mutual TLS with certificates of a cluster CA made for this run.\n\
         [cluster.tls]\ncert = {}\nkey = {}\nca = {}\n\n\
         # Persistent sessions and retained messages on disk, kept across restarts of `fleetgate up`.\n\
         [storage]\nmode = \"disk\"\npath = {}\n\n\
         # Development: every client admitted (a verified certificate CN is still recorded); production\n\
         # nodes list policies (certificate, client_id_from_cert, password) and an acl_file.\n\
         # PROXY headers are trusted from 127.0.0.1, where any local user can send one: with anonymous\n\
         # access that gains nothing, so keep it that way on a shared machine.\n\
         [auth]\nanonymous = true\n",
        quote(name),
        peers.join(", "),
        quote_path(tls.cert),
        quote_path(tls.key),
        quote_path(tls.ca),
        quote_path(store),
    )
}

/// Waits until every node's `/readyz` answers 200 and each has a link up with every other node (the cluster is
/// one broker before the LB sends it a client), or fails after `deadline`.
async fn wait_cluster(admins: &[(String, SocketAddr)], deadline: Duration) -> Result<()> {
    let others = admins.len().saturating_sub(1);
    let until = tokio::time::Instant::now() + deadline;
    for (name, admin) in admins {
        loop {
            let ready = children::admin_get(*admin, "/readyz")
                .await
                .map(|(status, _)| status)
                == Some(200);
            let peers = children::admin_get(*admin, "/metrics")
                .await
                .and_then(|(_, body)| children::gauge(&body, "fleetgate_cluster_peers_up"));
            if ready && (others == 0 || peers.is_some_and(|p| p >= others as f64)) {
                break;
            }
            if tokio::time::Instant::now() >= until {
                bail!(
                    "{name} is not ready with {others} cluster peer(s) within {deadline:?} (ready: {ready}, peers up: {peers:?})"
                );
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }
    Ok(())
}

/// The LB config: plain MQTT on `--mqtt-port`, TLS (client certificates optional) on `--mqtts-port`, every node a
/// backend reached with PROXY v2.
fn lb_config(args: &UpArgs, pki: &DevPki, backends: &[(String, SocketAddr)]) -> String {
    let mut out = format!(
        "# Generated by `fleetgate up`; rewritten on every start.\n\
         [lb]\nname = \"lb-dev\"\n\n[admin]\nbind = \"127.0.0.1:0\"\n\n\
         [[listeners]]\nname = \"mqtt\"\nbind = \"127.0.0.1:{}\"\n\n\
         [[listeners]]\nname = \"mqtts\"\nbind = \"127.0.0.1:{}\"\n\
         [listeners.tls]\ncertificates = [{{ cert = {}, key = {}, sni = [\"localhost\"] }}]\n\
         client_auth = \"optional\"\nclient_ca = {}\n",
        args.mqtt_port,
        args.mqtts_port,
        quote_path(&pki.server_cert),
        quote_path(&pki.server_key),
        quote_path(&pki.ca),
    );
    for (name, addr) in backends {
        out.push_str(&format!(
            "\n[[backends]]\nname = {}\naddress = {}\nproxy_protocol = \"v2\"\n",
            quote(name),
            quote(&addr.to_string())
        ));
    }
    out
}

/// What to print once everything listens.
fn banner(
    dir: &Path,
    pki: &DevPki,
    nodes: &[(String, SocketAddr, Option<SocketAddr>)],
    lb: Option<(SocketAddr, SocketAddr, Option<SocketAddr>)>,
) -> String {
    let mut out = String::new();
    let ca = pki.ca.display();
    let (cert, key) = (pki.client_cert.display(), pki.client_key.display());
    match lb {
        Some((mqtt, mqtts, admin)) => {
            let (p, tp) = (mqtt.port(), mqtts.port());
            out.push_str(&format!(
                "\nFleetgate is up: {} broker node(s) behind the load balancer (files in {}).\n\n\
                 Plain MQTT:   {mqtt}\n\
                 MQTT over TLS: localhost:{tp} (CA {ca}; client certificates optional)\n",
                nodes.len(),
                dir.display()
            ));
            if let Some(admin) = admin {
                out.push_str(&format!("LB admin:     http://{admin}/metrics\n"));
            }
            out.push_str(&format!(
                "\nTry:\n  mosquitto_sub -h 127.0.0.1 -p {p} -t '#' -v\n\
                 \x20 mosquitto_pub -h 127.0.0.1 -p {p} -t test -m hi\n\
                 \x20 mosquitto_sub --cafile {ca} -h localhost -p {tp} -t '#' -v\n\
                 \x20 mosquitto_pub --cafile {ca} --cert {cert} --key {key} -h localhost -p {tp} -t test -m hi\n"
            ));
        }
        None => {
            let Some((name, mqtt, _)) = nodes.first() else {
                return out;
            };
            let p = mqtt.port();
            out.push_str(&format!(
                "\nFleetgate is up: {} broker node(s), WITHOUT the load balancer (--no-lb), files in {}.\n\
                 Connect to {name} directly (plain MQTT, no PROXY protocol): {mqtt}\n\
                 Note: without the LB there is no TLS listener and no client routing by client ID.\n\n\
                 Try:\n  mosquitto_sub -h 127.0.0.1 -p {p} -t '#' -v\n\
                 \x20 mosquitto_pub -h 127.0.0.1 -p {p} -t test -m hi\n",
                nodes.len(),
                dir.display()
            ));
        }
    }
    out.push_str("\nNodes:\n");
    for (name, mqtt, admin) in nodes {
        let admin = admin.map_or_else(|| "-".to_string(), |a| format!("http://{a}/metrics"));
        out.push_str(&format!("  {name}: mqtt {mqtt}, admin {admin}\n"));
    }
    out.push_str("\nPress Ctrl-C to stop.\n");
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (CONTRIBUTING)
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("fleetgate-up-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn generated_node_configs_load() {
        let dir = scratch("node");
        for (behind_lb, port) in [(true, 0), (false, 1883)] {
            let path = dir.join("node.toml");
            let peers = vec![("broker-0".to_string(), "127.0.0.1:7000".parse().unwrap())];
            let cluster_pki = pki::cluster(&dir, &["broker-1".to_string()]).unwrap();
            let (_, cert, key) = &cluster_pki.nodes[0];
            let tls = ClusterTls {
                cert,
                key,
                ca: &cluster_pki.ca,
            };
            std::fs::write(
                &path,
                node_config(
                    "broker-1",
                    port,
                    behind_lb,
                    &peers,
                    &tls,
                    &dir.join("store"),
                ),
            )
            .unwrap();
            let config = NodeConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(config.name, "broker-1");
            assert!(
                matches!(&config.storage, fleetgate_config::node::StorageMode::Disk { path, .. } if *path == dir.join("store")),
                "{:?}",
                config.storage
            );
            let cluster = config.cluster.as_ref().expect("a [cluster] section");
            assert_eq!(cluster.peers.len(), 1);
            let tls = cluster
                .tls
                .as_ref()
                .expect("mutual TLS on the cluster links");
            assert_eq!(tls.ca, cluster_pki.ca);
            assert_eq!(cluster.peers[0].addr, "127.0.0.1:7000".parse().unwrap());
            assert_eq!(config.listeners[0].bind.port(), port);
            // Behind the LB, PROXY headers are trusted from the LB's address alone (see `node_config`).
            let trusted: Vec<String> = config.listeners[0]
                .trusted_proxies
                .iter()
                .map(ToString::to_string)
                .collect();
            let expected: &[&str] = if behind_lb { &["127.0.0.1/32"] } else { &[] };
            assert_eq!(trusted, expected);
            let auth = config.auth.as_ref().expect("an [auth] section");
            assert!(auth.default_policy.anonymous);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn generated_lb_config_loads() {
        let dir = scratch("lb");
        let (pki, _) = pki::ensure(&dir).unwrap();
        let args = UpArgs {
            dir: dir.clone(),
            nodes: 2,
            mqtt_port: 0,
            mqtts_port: 0,
            no_lb: false,
        };
        let backends = vec![
            ("broker-0".to_string(), "127.0.0.1:4000".parse().unwrap()),
            ("broker-1".to_string(), "127.0.0.1:4001".parse().unwrap()),
        ];
        let path = dir.join("lb.toml");
        std::fs::write(&path, lb_config(&args, &pki, &backends)).unwrap();
        let config = LbConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.backends.len(), 2);
        assert_eq!(config.listeners.len(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
