//! `[admin]`, the one admin-server table both binaries share (`node.toml` and `lb.toml`): raw [`AdminFile`] →
//! validated [`AdminConfig`], with the rule that an admin port other hosts can reach has a token. The server itself
//! is `fleetgate_ops::admin`.
//!
//! ```toml
//! [admin]
//! bind = "0.0.0.0:9200"                  # /metrics, the binary's routes, /healthz and /readyz too
//! probe_bind = "0.0.0.0:9201"            # optional: /healthz and /readyz alone, on a socket of their own
//! token_file = "/etc/fleetgate/admin/token"   # required when `bind` is not loopback
//! max_connections = 64
//! max_connections_per_ip = 8
//! request_timeout = "10s"
//! write_timeout = "10s"
//! ```
//!
//! Why a probe socket of its own: a request cannot be told to be a probe before it is read, and reading requests is
//! what a flood of the admin port contends for. On `probe_bind` nothing but the two constant probe answers is
//! served, with caps of its own, so scrapes, operator calls and a flood of the admin port never take a probe's
//! place.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::duration::ConfigDuration;

/// Default open connections per admin socket: probes, a scraper and an operator need a handful; beyond this a client
/// is hoarding connections (each costs a task and its buffers) and new ones are closed at once.
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;
/// Default open connections per source address (IPv6: per /64) per admin socket: a scraper and an operator from
/// one address need two or three; one hostile address then holds at most this many of the
/// [`DEFAULT_MAX_CONNECTIONS`].
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 8;
/// Default time a client gets to send a request (its headers, then its body), and the longest an idle keep-alive
/// connection stays open: probes and scrapers send a request at once; a client that trickles one is holding the
/// connection on purpose.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time a client gets to take what was written to it once the socket is full: a scraper reads `/metrics`
/// as it arrives; a client that pipelines requests and never reads would otherwise hold its connection (and the
/// responses queued for it) forever.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Shortest accepted admin timeout: a `"0s"` deadline fails every request at once.
const MIN_TIMEOUT: Duration = Duration::from_millis(1);

/// Raw `[admin]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AdminFile {
    /// Socket address of the admin HTTP server.
    pub(crate) bind: Spanned<String>,
    /// Socket address of the probe server (`/healthz`, `/readyz` only).
    pub(crate) probe_bind: Option<Spanned<String>>,
    /// File holding the bearer token of every request but `/healthz`, `/readyz` and `/metrics`.
    pub(crate) token_file: Option<Spanned<String>>,
    /// Open connections per socket.
    pub(crate) max_connections: Option<Spanned<usize>>,
    /// Open connections per source address per socket.
    pub(crate) max_connections_per_ip: Option<Spanned<usize>>,
    /// Deadline for a request's headers and body, and for an idle connection.
    pub(crate) request_timeout: Option<Spanned<ConfigDuration>>,
    /// Deadline for a client to take what was written to it.
    pub(crate) write_timeout: Option<Spanned<ConfigDuration>>,
}

/// A validated `[admin]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// Where `/healthz`, `/readyz`, `/metrics` and the binary's routes are served.
    pub bind: SocketAddr,
    /// Where `/healthz` and `/readyz` are also served, alone, if anywhere.
    pub probe_bind: Option<SocketAddr>,
    /// The bearer-token file (absolute), read by the binary at start; `None` = no token (loopback only).
    pub token_file: Option<PathBuf>,
    /// Connection caps and timeouts, the same for both sockets (each socket counts its own).
    pub limits: AdminLimits,
}

/// The caps and deadlines of an admin socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminLimits {
    /// Open connections at most; new ones beyond are closed at once.
    pub max_connections: usize,
    /// Open connections per source address (IPv6: per /64) at most.
    pub max_connections_per_ip: usize,
    /// Deadline for a request's headers (also: how long a keep-alive connection may idle) and for its body.
    pub request_timeout: Duration,
    /// Deadline for a client to take what is written to it, counted from the moment the socket is full.
    pub write_timeout: Duration,
}

impl Default for AdminLimits {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
        }
    }
}

impl AdminConfig {
    /// An admin server on `bind` with default limits, no probe socket and no token (what in-process tests use).
    pub fn local(bind: SocketAddr) -> AdminConfig {
        AdminConfig {
            bind,
            probe_bind: None,
            token_file: None,
            limits: AdminLimits::default(),
        }
    }
}

/// True when only this host can reach `addr`: a loopback address (`127.0.0.0/8`, `::1`, IPv4-mapped loopback).
fn loopback_only(addr: SocketAddr) -> bool {
    addr.ip().to_canonical().is_loopback()
}

/// Validates `[admin]` read from a file in `base` (relative paths are taken against it), reporting every problem
/// through `problem(span, message)`; `None` when the table is unusable.
pub(crate) fn validate_admin(
    raw: &AdminFile,
    base: &Path,
    problem: &mut dyn FnMut(Range<usize>, String),
) -> Option<AdminConfig> {
    let bind = parse_addr(&raw.bind, problem);
    let probe_bind = raw.probe_bind.as_ref().and_then(|p| parse_addr(p, problem));
    let token_file = raw.token_file.as_ref().map(|f| {
        if f.get_ref().trim().is_empty() {
            problem(f.span(), "token_file must not be empty".into());
        }
        base.join(f.get_ref())
    });
    if let Some(addr) = bind
        && token_file.is_none()
        && !loopback_only(addr)
    {
        problem(
            raw.bind.span(),
            format!(
                "admin bind {addr} is reachable from other hosts: set token_file (a file holding the bearer \
                 token that POST /drain, POST /reload, /clients/... and every other route but /healthz, /readyz \
                 and /metrics then require), or bind 127.0.0.1"
            ),
        );
    }
    let mut limits = AdminLimits::default();
    let mut at_least_one = |field: &str, value: &Option<Spanned<usize>>, slot: &mut usize| {
        if let Some(v) = value {
            if *v.get_ref() == 0 {
                problem(v.span(), format!("{field} must be at least 1"));
            }
            *slot = *v.get_ref();
        }
    };
    at_least_one(
        "max_connections",
        &raw.max_connections,
        &mut limits.max_connections,
    );
    at_least_one(
        "max_connections_per_ip",
        &raw.max_connections_per_ip,
        &mut limits.max_connections_per_ip,
    );
    for (field, value, slot) in [
        (
            "request_timeout",
            &raw.request_timeout,
            &mut limits.request_timeout,
        ),
        (
            "write_timeout",
            &raw.write_timeout,
            &mut limits.write_timeout,
        ),
    ] {
        if let Some(v) = value {
            *slot = v.get_ref().at_least(MIN_TIMEOUT).unwrap_or_else(|e| {
                problem(v.span(), format!("{field} {e}"));
                v.get_ref().get()
            });
        }
    }
    Some(AdminConfig {
        bind: bind?,
        probe_bind,
        token_file,
        limits,
    })
}

/// Parses a socket address, reporting an invalid one at its place.
fn parse_addr(
    value: &Spanned<String>,
    problem: &mut dyn FnMut(Range<usize>, String),
) -> Option<SocketAddr> {
    let parsed = value.get_ref().parse::<SocketAddr>().ok();
    if parsed.is_none() {
        problem(
            value.span(),
            format!(
                "invalid socket address {:?} (expected e.g. \"127.0.0.1:9100\")",
                value.get_ref()
            ),
        );
    }
    parsed
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (CONTRIBUTING)
mod tests {
    use super::*;
    use crate::load::{ConfigError, Problem, parse_toml};

    #[derive(Debug, Deserialize)]
    struct Doc {
        admin: AdminFile,
    }

    fn parse(text: &str) -> Result<AdminConfig, ConfigError> {
        let file = Path::new("/etc/fg/x.toml");
        let raw: Doc = parse_toml(file, text)?;
        let mut problems = Vec::new();
        let config = validate_admin(&raw.admin, Path::new("/etc/fg"), &mut |span, message| {
            problems.push(Problem::at(file, text, Some(span), message))
        });
        match (config, problems.is_empty()) {
            (Some(c), true) => Ok(c),
            _ => Err(ConfigError::from(problems)),
        }
    }

    #[test]
    fn defaults_and_every_key() {
        let c = parse("[admin]\nbind = \"127.0.0.1:9100\"\n").unwrap();
        assert_eq!(c, AdminConfig::local("127.0.0.1:9100".parse().unwrap()));
        let c = parse(
            "[admin]\nbind = \"0.0.0.0:9100\"\nprobe_bind = \"0.0.0.0:9101\"\ntoken_file = \"admin/token\"\n\
             max_connections = 10\nmax_connections_per_ip = 2\nrequest_timeout = \"2s\"\nwrite_timeout = \"500ms\"\n",
        )
        .unwrap();
        assert_eq!(c.probe_bind, Some("0.0.0.0:9101".parse().unwrap()));
        assert_eq!(
            c.token_file.as_deref(),
            Some(Path::new("/etc/fg/admin/token"))
        );
        assert_eq!(
            c.limits,
            AdminLimits {
                max_connections: 10,
                max_connections_per_ip: 2,
                request_timeout: Duration::from_secs(2),
                write_timeout: Duration::from_millis(500),
            }
        );
    }

    #[test]
    fn a_port_other_hosts_reach_needs_a_token() {
        for bind in [
            "0.0.0.0:9100",
            "10.1.2.3:9100",
            "[::]:9100",
            "[fd00::1]:9100",
        ] {
            let err = parse(&format!("[admin]\nbind = \"{bind}\"\n")).unwrap_err();
            assert_eq!(err.problems.len(), 1, "{err}");
            let shown = err.to_string();
            assert!(
                shown.starts_with("/etc/fg/x.toml:2:8: admin bind")
                    && shown.contains("set token_file"),
                "{shown}"
            );
        }
        for bind in [
            "127.0.0.1:0",
            "127.0.0.2:9100",
            "[::1]:9100",
            "[::ffff:127.0.0.1]:9100",
        ] {
            parse(&format!("[admin]\nbind = \"{bind}\"\n")).unwrap();
        }
        // The probe socket serves only the probes: it needs no token wherever it listens.
        parse("[admin]\nbind = \"127.0.0.1:0\"\nprobe_bind = \"0.0.0.0:9101\"\n").unwrap();
    }

    #[test]
    fn every_bad_value_is_reported_at_once() {
        let err = parse(
            "[admin]\nbind = \"nowhere\"\nprobe_bind = \"x\"\ntoken_file = \" \"\nmax_connections = 0\n\
             max_connections_per_ip = 0\nrequest_timeout = \"0s\"\nwrite_timeout = \"0ms\"\n",
        )
        .unwrap_err();
        let lines: Vec<usize> = err.problems.iter().map(|p| p.line).collect();
        assert_eq!(lines, [2, 3, 4, 5, 6, 7, 8], "{err}");
        assert!(
            parse("[admin]\nbind = \"127.0.0.1:0\"\nbogus = 1\n")
                .unwrap_err()
                .to_string()
                .contains("bogus")
        );
    }
}
