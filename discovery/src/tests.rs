//! End-to-end tests of [`Discovery`] against the stub DNS server on 127.0.0.1:0; every wait is bounded.

use std::future::Future;
use std::time::Duration;

use hickory_proto::rr::RecordType;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{
    Discovery, DiscoveryOptions, Endpoint, EndpointSet, FailureReason, NameFrom, Nameserver, Source,
};
use fleetgate_testkit::dns::{Mode, StubDns};
use fleetgate_testkit::wait_until;

/// Longest any test waits for something that should happen within a refresh or two (floor: 1 s).
const DEADLINE: Duration = Duration::from_secs(8);

fn options(stub: &StubDns) -> DiscoveryOptions {
    DiscoveryOptions {
        // Long, so that any refresh seen within a test comes from a TTL or a failure retry.
        interval: Duration::from_secs(60),
        nameserver: Nameserver::At(stub.addr()),
        query_timeout: Duration::from_millis(300),
        round_timeout: Duration::from_secs(3),
        ..DiscoveryOptions::default()
    }
}

fn pairs(set: &[Endpoint]) -> Vec<(String, String)> {
    set.iter()
        .map(|e| (e.name.clone(), e.addr.to_string()))
        .collect()
}

fn pair(name: &str, addr: &str) -> (String, String) {
    (name.to_string(), addr.to_string())
}

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(DEADLINE, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// Waits until the published set satisfies `pred` and returns it.
async fn wait_set(
    rx: &mut watch::Receiver<EndpointSet>,
    what: &str,
    pred: impl FnMut(&EndpointSet) -> bool,
) -> EndpointSet {
    within(what, rx.wait_for(pred))
        .await
        .expect("discovery channel open")
        .clone()
}

/// Polls `cond` until it holds, up to [`DEADLINE`].
async fn eventually(what: &str, cond: impl FnMut() -> bool) {
    wait_until(DEADLINE, what, cond).await;
}

/// The first set published for the SRV records of `_mqtt._tcp.broker.test.`, members named by `name_from`.
async fn srv_set(stub: &StubDns, name_from: NameFrom) -> EndpointSet {
    let source = Source::DnsSrv {
        name: "_mqtt._tcp.broker.test.".into(),
        name_from,
    };
    let d = Discovery::spawn(source, options(stub), CancellationToken::new()).unwrap();
    wait_set(&mut d.subscribe(), "SRV endpoints", |s| !s.is_empty()).await
}

fn a_source(name: &str) -> Source {
    Source::DnsA {
        name: name.to_string(),
        port: 1883,
    }
}

#[tokio::test]
async fn static_list_is_published_at_once_sorted() {
    let shutdown = CancellationToken::new();
    let list = vec![
        Endpoint::new("broker-1", "10.0.0.2:1883".parse().unwrap()),
        Endpoint::new("broker-0", "10.0.0.1:1883".parse().unwrap()),
    ];
    let d = Discovery::spawn(Source::Static(list), DiscoveryOptions::default(), shutdown).unwrap();
    assert_eq!(
        pairs(&d.current()),
        vec![
            pair("broker-0", "10.0.0.1:1883"),
            pair("broker-1", "10.0.0.2:1883")
        ]
    );
}

#[tokio::test]
async fn a_records_give_one_endpoint_per_address() {
    let stub = StubDns::start().await;
    stub.set_addresses("broker.test.", &["10.0.0.2", "10.0.0.1"], 60);
    let shutdown = CancellationToken::new();
    let d = Discovery::spawn(a_source("broker.test."), options(&stub), shutdown.clone()).unwrap();
    let set = wait_set(&mut d.subscribe(), "A endpoints", |s| !s.is_empty()).await;
    assert_eq!(
        pairs(&set),
        vec![
            pair("10.0.0.1:1883", "10.0.0.1:1883"),
            pair("10.0.0.2:1883", "10.0.0.2:1883")
        ]
    );
    assert!(
        stub.queries("broker.test.", RecordType::AAAA) >= 1,
        "AAAA asked too"
    );
    shutdown.cancel();
    within("task exit", d.join()).await;
}

#[tokio::test]
async fn srv_targets_are_named_by_first_label_at_their_addresses() {
    let stub = StubDns::start().await;
    stub.set_srv(
        "_mqtt._tcp.broker.test.",
        &[
            ("broker-1.broker.test.", 1884),
            ("broker-0.broker.test.", 1883),
        ],
        60,
        false,
    );
    stub.set_addresses("broker-0.broker.test.", &["10.0.0.10"], 60);
    stub.set_addresses("broker-1.broker.test.", &["10.0.0.11", "fd00::11"], 60);
    let set = srv_set(&stub, NameFrom::FirstLabel).await;
    // broker-1 is dual-stack: one ring member, at its IPv4 address.
    assert_eq!(
        pairs(&set),
        vec![
            pair("broker-0", "10.0.0.10:1883"),
            pair("broker-1", "10.0.0.11:1884")
        ]
    );
}

#[tokio::test]
async fn srv_uses_the_additional_section_and_full_target_names() {
    let stub = StubDns::start().await;
    stub.set_srv(
        "_mqtt._tcp.broker.test.",
        &[("broker-0.broker.test.", 1883)],
        60,
        true,
    );
    stub.set_addresses("broker-0.broker.test.", &["10.0.0.10"], 60);
    let set = srv_set(&stub, NameFrom::Target).await;
    assert_eq!(
        pairs(&set),
        vec![pair("broker-0.broker.test", "10.0.0.10:1883")]
    );
    assert_eq!(
        stub.queries("broker-0.broker.test.", RecordType::A),
        0,
        "glue used, no follow-up"
    );
}

#[tokio::test]
async fn a_pod_that_changes_ip_keeps_its_name() {
    let stub = StubDns::start().await;
    stub.set_srv(
        "_mqtt._tcp.broker.test.",
        &[
            ("broker-0.broker.test.", 1883),
            ("broker-1.broker.test.", 1883),
        ],
        1,
        false,
    );
    stub.set_addresses("broker-0.broker.test.", &["10.0.0.10"], 1);
    stub.set_addresses("broker-1.broker.test.", &["10.0.0.11"], 1);
    let source = Source::DnsSrv {
        name: "_mqtt._tcp.broker.test.".into(),
        name_from: NameFrom::FirstLabel,
    };
    let d = Discovery::spawn(source, options(&stub), CancellationToken::new()).unwrap();
    let mut rx = d.subscribe();
    wait_set(&mut rx, "first set", |s| s.len() == 2).await;

    stub.set_addresses("broker-0.broker.test.", &["10.0.0.99"], 1);
    let set = wait_set(&mut rx, "new address", |s| {
        s.iter().any(|e| e.addr.to_string() == "10.0.0.99:1883")
    })
    .await;
    assert_eq!(
        pairs(&set),
        vec![
            pair("broker-0", "10.0.0.99:1883"),
            pair("broker-1", "10.0.0.11:1883")
        ]
    );
    assert_eq!(d.stats().changes, 2);
}

#[tokio::test]
async fn a_removed_record_removes_its_endpoint() {
    let stub = StubDns::start().await;
    stub.set_addresses("broker.test.", &["10.0.0.1", "10.0.0.2", "fd00::3"], 1);
    let d = Discovery::spawn(
        a_source("broker.test."),
        options(&stub),
        CancellationToken::new(),
    )
    .unwrap();
    let mut rx = d.subscribe();
    wait_set(&mut rx, "three endpoints", |s| s.len() == 3).await;

    stub.set_addresses("broker.test.", &["10.0.0.2", "fd00::3"], 1);
    let set = wait_set(&mut rx, "removal", |s| s.len() == 2).await;
    assert_eq!(
        pairs(&set),
        vec![
            pair("10.0.0.2:1883", "10.0.0.2:1883"),
            pair("[fd00::3]:1883", "[fd00::3]:1883")
        ]
    );
}

#[tokio::test]
async fn a_short_ttl_refreshes_before_the_interval() {
    let stub = StubDns::start().await;
    stub.set_addresses("short.test.", &["10.0.0.1"], 1);
    stub.set_addresses("long.test.", &["10.0.0.1"], 600);
    let short = Discovery::spawn(
        a_source("short.test."),
        options(&stub),
        CancellationToken::new(),
    )
    .unwrap();
    let long = Discovery::spawn(
        a_source("long.test."),
        options(&stub),
        CancellationToken::new(),
    )
    .unwrap();
    wait_set(&mut short.subscribe(), "short set", |s| !s.is_empty()).await;
    wait_set(&mut long.subscribe(), "long set", |s| !s.is_empty()).await;

    // Interval 60 s: only the 1 s TTL (at the 1 s floor) can explain a third round within the deadline.
    eventually("three rounds of the short-TTL name", || {
        short.stats().refreshes >= 3
    })
    .await;
    assert_eq!(short.stats().next_refresh, Duration::from_secs(1));
    assert_eq!(long.stats().next_refresh, Duration::from_secs(60));
    assert_eq!(long.stats().refreshes, 1);
    assert_eq!(stub.queries("long.test.", RecordType::A), 1);
}

/// Starts discovery of `broker.test.` (TTL 1 s), waits for its first set, then switches the stub to `mode`.
async fn good_then(stub: &StubDns, mode: Mode) -> Discovery {
    stub.set_addresses("broker.test.", &["10.0.0.1"], 1);
    let d = Discovery::spawn(
        a_source("broker.test."),
        options(stub),
        CancellationToken::new(),
    )
    .unwrap();
    wait_set(&mut d.subscribe(), "first set", |s| s.len() == 1).await;
    stub.set_mode(mode);
    d
}

async fn assert_kept_after(d: &Discovery, reason: FailureReason) {
    eventually(reason.as_str(), || d.stats().failures(reason) >= 1).await;
    assert_eq!(
        pairs(&d.current()),
        vec![pair("10.0.0.1:1883", "10.0.0.1:1883")]
    );
    assert_eq!(d.stats().changes, 1, "no change published on failure");
}

#[tokio::test]
async fn servfail_keeps_the_last_good_set_and_recovers() {
    let stub = StubDns::start().await;
    let d = good_then(&stub, Mode::ServFail).await;
    assert_kept_after(&d, FailureReason::ServFail).await;

    stub.set_addresses("broker.test.", &["10.0.0.1", "10.0.0.2"], 1);
    stub.set_mode(Mode::Answer);
    wait_set(&mut d.subscribe(), "recovery", |s| s.len() == 2).await;
}

#[tokio::test]
async fn a_silent_nameserver_times_out_and_keeps_the_set() {
    let stub = StubDns::start().await;
    let d = good_then(&stub, Mode::Silent).await;
    assert_kept_after(&d, FailureReason::Timeout).await;
}

#[tokio::test]
async fn nxdomain_keeps_the_last_good_set() {
    let stub = StubDns::start().await;
    let d = good_then(&stub, Mode::NxDomain).await;
    assert_kept_after(&d, FailureReason::NxDomain).await;
}

#[tokio::test]
async fn an_empty_answer_keeps_the_last_good_set() {
    let stub = StubDns::start().await;
    let d = good_then(&stub, Mode::Answer).await;
    // The name still exists (an SRV record) but has no address any more: NOERROR with no answer.
    stub.set_srv("broker.test.", &[("x.test.", 1)], 1, false);
    stub.set_addresses("broker.test.", &[], 1);
    assert_kept_after(&d, FailureReason::Empty).await;
}

#[tokio::test(flavor = "current_thread")]
async fn failures_and_changes_are_counted_as_metrics() {
    // current_thread: the refresh task runs on this thread, where the local recorder is installed.
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);

    let stub = StubDns::start().await;
    let d = good_then(&stub, Mode::ServFail).await;
    eventually("a failure", || d.stats().total_failures() >= 1).await;

    let mut changes = 0;
    let mut servfails = 0;
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let key = key.key();
        let labels: Vec<(String, String)> = key
            .labels()
            .map(|l| (l.key().to_string(), l.value().to_string()))
            .collect();
        let DebugValue::Counter(n) = value else {
            continue;
        };
        assert!(
            labels.contains(&("source".to_string(), "a:broker.test.".to_string())),
            "{labels:?}"
        );
        match key.name() {
            "fleetgate_discovery_changes_total" => changes += n,
            "fleetgate_discovery_failures_total"
                if labels.contains(&("reason".to_string(), "servfail".to_string())) =>
            {
                servfails += n
            }
            _ => {}
        }
    }
    assert_eq!(changes, 1);
    assert!(servfails >= 1);
}
