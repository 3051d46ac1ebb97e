//! Who may send a PROXY header and how long/large it may be: checked before the first byte is read.

use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;

/// Default time a trusted proxy gets to deliver the whole header. A proxy writes it at once with the first
/// segment, so anything slower is a stuck or hostile peer holding a connection slot.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Default cap on a v2 header (fixed 16 bytes + addresses + TLVs). Our own LB sends at most a 16 KiB client
/// certificate plus a few hundred bytes of strings; the format itself allows 64 KiB, which is memory per
/// connection an attacker could make us hold.
pub const DEFAULT_MAX_HEADER_LEN: usize = 32 * 1024;

/// CIDRs of the proxies (load balancers) allowed to send a PROXY header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(pub Vec<IpNet>);

impl TrustedProxies {
    /// A list of trusted networks.
    pub fn new(nets: Vec<IpNet>) -> Self {
        Self(nets)
    }

    /// True when `ip` is inside one of the networks. An IPv4-mapped IPv6 peer (`::ffff:10.0.0.1`, as a
    /// dual-stack socket reports it) matches IPv4 networks, and an IPv4 peer matches `::ffff:0:0/96`-style ones.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let canonical = ip.to_canonical();
        let mapped = match canonical {
            IpAddr::V4(v4) => Some(IpAddr::V6(v4.to_ipv6_mapped())),
            IpAddr::V6(_) => None,
        };
        self.0.iter().any(|net| {
            net.contains(&ip)
                || net.contains(&canonical)
                || mapped.as_ref().is_some_and(|m| net.contains(m))
        })
    }
}

impl From<Vec<IpNet>> for TrustedProxies {
    fn from(nets: Vec<IpNet>) -> Self {
        Self(nets)
    }
}

/// How a listener accepts PROXY headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyPolicy {
    /// Peers allowed to send a header; any other peer is refused before a byte is read.
    pub trusted: TrustedProxies,
    /// Deadline for the whole header.
    pub timeout: Duration,
    /// Largest accepted header in bytes, 16-byte fixed part included (v2); v1 is always capped at 107 bytes.
    pub max_header_len: usize,
}

impl ProxyPolicy {
    /// A policy with the default timeout and size cap.
    pub fn new(trusted: TrustedProxies) -> Self {
        Self {
            trusted,
            timeout: DEFAULT_HEADER_TIMEOUT,
            max_header_len: DEFAULT_MAX_HEADER_LEN,
        }
    }
}
