//! Cluster links: peers found through DNS SRV records, mutual TLS refusing a node of another CA or one claiming a
//! name its certificate lacks.

use fleetgate_testkit::dns::StubDns;
use fleetgate_testkit::{CertFiles, Node, Pki, WAIT, bounded, id_owned_by};

use crate::harness::*;

/// Three nodes that list no peers: each finds the others in the SRV records of one name, as pods of a
/// StatefulSet find each other through their headless Service, and they serve one subscriber/publisher pair
/// across nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_discovered_through_dns_srv_records_form_one_cluster() {
    bounded(TEST_LIMIT, async {
        const SRV: &str = "_cluster._tcp.broker.test.";
        let dns = StubDns::start().await;
        let extra = format!(
            "peers_from = {{ dns = {{ name = \"{SRV}\", type = \"srv\", nameserver = \"{}\", interval = \"1s\", timeout = \"500ms\" }} }}",
            dns.addr()
        );
        let mut targets: Vec<(String, u16)> = Vec::new();
        let mut nodes = Vec::new();
        // Each pod appears in DNS once it runs (its cluster port is known only then); the first ones learn of
        // the later ones by refreshing.
        for name in NAMES {
            let node = start_node(name, &[], &extra).await;
            let host = format!("{name}.broker.test.");
            dns.set_addresses(&host, &["127.0.0.1"], 1);
            targets.push((host, node.cluster().port()));
            let srv: Vec<(&str, u16)> = targets.iter().map(|(h, p)| (h.as_str(), *p)).collect();
            dns.set_srv(SRV, &srv, 1, true);
            nodes.push(node);
        }
        wait_linked(&nodes.iter().collect::<Vec<_>>(), 2.0, true).await;
        // broker-0 saw the later pods in DNS (itself included), not only through their dial-back.
        nodes[0]
            .admin.wait_gauge("fleetgate_discovery_endpoints", &[], 3.0)
            .await;
        let sub_id = id_owned_by(&NAMES, NAMES[2], "dns-sub");
        assert_delivered(&nodes[2], &sub_id, &nodes[0], &NAMES, "dns").await;
    })
    .await;
}

/// `[cluster.tls]` lines for a node certificate of `pki`'s CA or another.
fn cluster_tls(pki: &Pki, cert: &CertFiles) -> String {
    format!(
        "[cluster.tls]\ncert = {:?}\nkey = {:?}\nca = {:?}\n",
        cert.cert,
        cert.key,
        pki.ca_cert()
    )
}

/// broker-0 and broker-1 with certificates of `pki`'s CA, linked over mutual TLS and ready.
async fn start_tls_pair(pki: &Pki) -> (Node, Node) {
    let n0 = start_node(
        NAMES[0],
        &[],
        &cluster_tls(pki, &pki.cluster_node(NAMES[0])),
    )
    .await;
    let n1 = start_node(
        NAMES[1],
        &[(NAMES[0], n0.cluster())],
        &cluster_tls(pki, &pki.cluster_node(NAMES[1])),
    )
    .await;
    wait_linked(&[&n0, &n1], 1.0, true).await;
    (n0, n1)
}

/// Two nodes with certificates of the cluster CA link up over mutual TLS and act as one broker; a third node
/// whose certificate comes from another CA is refused (it trusts the cluster CA, so the refusal is the
/// cluster's verification of its certificate).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_links_refuse_a_node_of_another_ca() {
    bounded(TEST_LIMIT, async {
        let pki = Pki::new();
        let (n0, n1) = start_tls_pair(&pki).await;
        let names = &NAMES[..2];
        let sub_id = id_owned_by(names, NAMES[1], "tls-sub");
        assert_delivered(&n1, &sub_id, &n0, names, "tls").await;

        let intruder = start_node(
            NAMES[2],
            &[(NAMES[0], n0.cluster())],
            &cluster_tls(&pki, &pki.foreign_cluster_node(NAMES[2])),
        )
        .await;
        for n in [&n0, &intruder] {
            n.process
                .wait_for_log(WAIT, "cluster_tls_failed", |v| {
                    v["event"] == "cluster_tls_failed"
                })
                .await;
        }
        assert_eq!(peers_up(&intruder).await, 0.0);
        assert_eq!(peers_up(&n0).await, 1.0);
        let linked = n0
            .process
            .json_logs()
            .iter()
            .any(|v| v["event"] == "cluster_peer_up" && v["peer"] == NAMES[2]);
        assert!(!linked, "no link with the intruder");
    })
    .await;
}

/// A node whose certificate of the cluster CA is valid for `broker-9` but whose Hello claims `broker-1` (the name
/// of a node already linked) is refused by the accepting side after its Hello: counted, logged, no link, and the
/// real `broker-1` keeps its link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_a_node_claiming_a_name_its_certificate_lacks() {
    bounded(TEST_LIMIT, async {
        let pki = Pki::new();
        let (n0, n1) = start_tls_pair(&pki).await;

        let impostor = start_node(
            NAMES[1],
            &[(NAMES[0], n0.cluster())],
            &cluster_tls(&pki, &pki.cluster_node("broker-9")),
        )
        .await;
        let refused = n0
            .process
            .wait_for_log(WAIT, "cluster_peer_rejected for the impostor", |v| {
                v["event"] == "cluster_peer_rejected"
                    && v["peer"] == NAMES[1]
                    && v["reason"] == "name_mismatch"
            })
            .await;
        assert_eq!(refused["advertise"], impostor.cluster().to_string());
        n0.admin
            .wait_count(
                "fleetgate_cluster_links_refused_total",
                &[("reason", "name_mismatch")],
                1.0,
            )
            .await;
        assert_eq!(peers_up(&impostor).await, 0.0);
        assert_eq!(peers_up(&n0).await, 1.0);
        // The real broker-1 keeps its link both ways.
        assert_eq!(peers_up(&n1).await, 1.0);
    })
    .await;
}
