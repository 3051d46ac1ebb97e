//! Tests of the LB config: the whole file, located problems, the control tables, the example file.

use super::limits::DEFAULT_IDLE_GRACE;
use super::*;

const VALID: &str = r#"
[lb]
name = "lb-0"

[admin]
bind = "127.0.0.1:0"

[[listeners]]
name = "mqtt"
bind = "127.0.0.1:0"

[[listeners]]
name = "mqtts"
bind = "0.0.0.0:8883"
accept_proxy_from = ["10.0.0.0/8", "192.168.1.1"]
max_connections = 10
[listeners.tls]
certificates = [
  { cert = "a.pem", key = "a.key" },
  { cert = "/etc/b.pem", key = "/etc/b.key", sni = ["MQTT.example.com."] },
]
client_auth = "required"
client_ca = "ca.pem"
crls = ["ca.crl"]
handshake_timeout = "2s"

[[backends]]
name = "broker-0"
address = "127.0.0.1:1883"

[[backends]]
name = "broker-1"
address = "broker-1.local:1883"
weight = 2
proxy_protocol = "v2"
send_client_cert = true
crc32c = true

[limits]
connect_peek_timeout = "3s"
max_connect_size = 4096
max_connections = 100
per_ip_rate = 5.0
tls_handshakes_per_second = 100
bounded_load_factor = 1.25
"#;

#[test]
fn valid_config() {
    let cfg = LbConfig::parse(Path::new("/etc/fg/lb.toml"), VALID).unwrap();
    assert_eq!(cfg.name, "lb-0");
    assert_eq!(cfg.listeners.len(), 2);
    let tls = cfg.listeners[1].tls.as_ref().unwrap();
    assert_eq!(tls.certificates[0].cert, Path::new("/etc/fg/a.pem"));
    assert_eq!(tls.certificates[1].cert, Path::new("/etc/b.pem"));
    assert_eq!(
        tls.certificates[1].sni,
        vec!["mqtt.example.com".to_string()]
    );
    assert_eq!(tls.client_auth, ClientAuth::Required);
    assert_eq!(tls.client_ca.as_deref(), Some(Path::new("/etc/fg/ca.pem")));
    assert_eq!(tls.handshake_timeout, Duration::from_secs(2));
    assert_eq!(cfg.listeners[1].accept_proxy_from.len(), 2);
    assert_eq!(cfg.listeners[1].max_connections, Some(10));
    assert_eq!(cfg.backends[0].proxy_protocol, ProxyVersion::V2);
    assert_eq!(cfg.backends[0].weight, 1);
    assert!(cfg.backends[1].send_client_cert && cfg.backends[1].crc32c);
    assert_eq!(cfg.limits.connect_peek_timeout, Duration::from_secs(3));
    assert_eq!(cfg.limits.max_connect_size, 4096);
    assert_eq!(cfg.limits.per_ip_rate, Some((5.0, 5)));
    assert_eq!(cfg.limits.idle_grace, DEFAULT_IDLE_GRACE);
    assert_eq!(cfg.limits.bounded_load_factor, Some(1.25));
    assert_eq!(
        cfg.limits.max_connections_per_ip,
        DEFAULT_MAX_CONNECTIONS_PER_IP
    );
    assert_eq!(cfg.limits.max_buffered_bytes, DEFAULT_MAX_BUFFERED_BYTES);
    let set = VALID.replace(
        "bounded_load_factor = 1.25\n",
        "bounded_load_factor = 1.25\nmax_connections_per_ip = 3\nmax_buffered_bytes = \"1MiB\"\n",
    );
    let cfg = LbConfig::parse(Path::new("/etc/fg/lb.toml"), &set).unwrap();
    assert_eq!(cfg.limits.max_connections_per_ip, 3);
    assert_eq!(cfg.limits.max_buffered_bytes, 1 << 20);
}

#[test]
fn unknown_field_is_located() {
    let src = "[lb]\nname = \"a\"\n[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\nport = 3\n";
    let err = LbConfig::parse(Path::new("lb.toml"), src).unwrap_err();
    assert_eq!(err.problems[0].line, 6, "{err}");
    assert!(err.to_string().contains("port"), "{err}");
}

#[test]
fn every_problem_is_reported_in_place() {
    let src = r#"[lb]
name = "a"
[[listeners]]
name = "l"
bind = "nowhere"
accept_proxy_from = ["10.0.0.0/99"]
[listeners.tls]
certificates = []
client_auth = "sometimes"
[[listeners]]
name = "l"
bind = "127.0.0.1:0"
[listeners.tls]
certificates = [{ cert = "c", key = "k" }]
client_auth = "required"
[[backends]]
name = "b"
address = "no-port"
proxy_protocol = "v1"
crc32c = true
[limits]
max_connect_size = 10
bounded_load_factor = 0.5
max_connections_per_ip = 0
max_buffered_bytes = "16KiB"
"#;
    let err = LbConfig::parse(Path::new("lb.toml"), src).unwrap_err();
    let lines: Vec<usize> = err.problems.iter().map(|p| p.line).collect();
    assert_eq!(
        lines,
        vec![5, 8, 9, 6, 11, 15, 18, 20, 22, 24, 23, 25],
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("lb.toml:11:8: duplicate listener name"),
        "{err}"
    );
}

#[test]
fn listeners_and_backends_are_required() {
    let err = LbConfig::parse(Path::new("lb.toml"), "[lb]\nname = \"a\"\n").unwrap_err();
    assert_eq!(err.problems.len(), 2, "{err}");
}

#[test]
fn control_tables() {
    let src = r#"[lb]
name = "lb-7"
[[listeners]]
name = "l"
bind = "127.0.0.1:0"
[health]
kind = "mqtt"
interval = "500ms"
fall = 4
username = "probe"
password = "s3cret"
[[backends]]
name = "b0"
address = "127.0.0.1:1883"
drain = true
health = { kind = "http", http_port = 9100 }
[[backends]]
name = "b1"
address = "127.0.0.1:1884"
[drain]
delay = "2s"
rate = 50.0
jitter = 0.1
[discovery]
endpoints = { static = [{ name = "b9", address = "127.0.0.1:1885" }] }
proxy_protocol = "v1"
"#;
    let cfg = LbConfig::parse(Path::new("lb.toml"), src).unwrap();
    let (b0, b1) = (&cfg.backends[0], &cfg.backends[1]);
    assert!(b0.drain && !b1.drain);
    assert_eq!(b0.health.kind, HealthKind::Http);
    assert_eq!(b0.health.http_port, Some(9100));
    assert_eq!(b0.health.fall, 4, "unset fields come from [health]");
    assert_eq!(b1.health.kind, HealthKind::Mqtt);
    assert_eq!(b1.health.interval, Duration::from_millis(500));
    assert_eq!(b1.health.client_id, "fleetgate-probe-lb-7");
    assert!(
        !format!("{cfg:?}").contains("s3cret"),
        "the password is never printed"
    );
    assert_eq!(cfg.drain.delay, Duration::from_secs(2));
    assert_eq!(cfg.drain.rate, 50.0);
    let d = cfg.discovery.unwrap();
    assert_eq!(d.template.proxy_protocol, ProxyVersion::V1);
    assert_eq!(d.template.health.kind, HealthKind::Mqtt);

    let bad = src
        .replace("fall = 4", "fall = 0")
        .replace("rate = 50.0", "rate = -1.0")
        .replace("kind = \"http\"", "kind = \"icmp\"");
    let err = LbConfig::parse(Path::new("lb.toml"), &bad).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("lb.toml:9:8: fall must be between 1 and 100"),
        "{text}"
    );
    assert!(text.contains("health kind must be"), "{text}");
    assert!(text.contains("drain rate must be"), "{text}");
}

#[test]
fn example_file_parses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/lb.toml");
    let cfg = LbConfig::load(&path).unwrap();
    assert!(!cfg.listeners.is_empty());
    assert!(!cfg.backends.is_empty());
}

#[test]
fn zero_timeouts_are_refused_in_place() {
    let src = r#"[lb]
name = "a"
[[listeners]]
name = "l"
bind = "127.0.0.1:0"
[listeners.tls]
certificates = [{ cert = "c", key = "k" }]
handshake_timeout = "0s"
[[backends]]
name = "b"
address = "127.0.0.1:1883"
health = { kind = "tcp", interval = "0s", timeout = "0ms" }
[limits]
connect_peek_timeout = "0s"
backend_connect_timeout = "0ms"
"#;
    let err = LbConfig::parse(Path::new("lb.toml"), src).unwrap_err();
    let text = err.to_string();
    for needle in [
        "lb.toml:8:21: handshake_timeout must be at least 1ms",
        "lb.toml:12:37: health interval must be at least 100ms",
        "lb.toml:12:53: health timeout must be at least 1ms",
        "lb.toml:14:24: connect_peek_timeout must be at least 1ms",
        "lb.toml:15:27: backend_connect_timeout must be at least 1ms",
    ] {
        assert!(text.contains(needle), "{needle} in\n{text}");
    }
    assert_eq!(err.problems.len(), 5, "{text}");
    let ok = src
        .replace("\"0s\"", "\"1ms\"")
        .replace("\"0ms\"", "\"1ms\"");
    let err = LbConfig::parse(Path::new("lb.toml"), &ok).unwrap_err();
    assert_eq!(
        err.problems.len(),
        1,
        "only the 1ms interval is too short: {err}"
    );
}

#[test]
fn admin_token_file_is_named_not_read_and_required_off_loopback() {
    let src = "[lb]\nname = \"a\"\n[admin]\nbind = \"0.0.0.0:9200\"\ntoken_file = \"secrets/admin.token\"\n\
               [[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\n\
               [[backends]]\nname = \"b\"\naddress = \"127.0.0.1:1883\"\n";
    let cfg = LbConfig::parse(Path::new("/etc/fg/lb.toml"), src).unwrap();
    let admin = cfg.admin.unwrap();
    assert_eq!(
        admin.token_file.as_deref(),
        Some(Path::new("/etc/fg/secrets/admin.token"))
    );
    let without = src.replace("token_file = \"secrets/admin.token\"\n", "");
    let err = LbConfig::parse(Path::new("/etc/fg/lb.toml"), &without).unwrap_err();
    assert!(
        err.to_string().starts_with(
            "/etc/fg/lb.toml:4:8: admin bind 0.0.0.0:9200 is reachable from other hosts"
        ),
        "{err}"
    );
    let loopback = without.replace("0.0.0.0:9200", "127.0.0.1:9200");
    let cfg = LbConfig::parse(Path::new("/etc/fg/lb.toml"), &loopback).unwrap();
    assert_eq!(cfg.admin.unwrap().token_file, None);
}

#[test]
fn raw_health_table_hides_the_password() {
    let src = "[lb]\nname = \"a\"\n[health]\nusername = \"probe\"\npassword = \"s3cret\"\n";
    let raw: LbFile = parse_toml(Path::new("lb.toml"), src).unwrap();
    let health = raw.health.as_ref().unwrap();
    assert_eq!(
        health.password.as_ref().unwrap().get_ref().expose(),
        "s3cret"
    );
    let printed = format!("{raw:?}");
    assert!(!printed.contains("s3cret"), "{printed}");
    assert!(printed.contains("probe"), "{printed}");
}
