//! What discovery finds and where it looks: [`Endpoint`] (a stable name and an address), [`Source`] (a static
//! list, DNS A/AAAA, DNS SRV) and [`normalize`], which turns a lookup's raw findings into the published set.

use std::net::SocketAddr;

/// One member of a discovered set: an LB backend or a cluster peer.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    /// Stable name, used as the ring key and to carry health across refreshes.
    pub name: String,
    /// Where to connect.
    pub addr: SocketAddr,
}

impl Endpoint {
    /// An endpoint with an explicit name.
    pub fn new(name: impl Into<String>, addr: SocketAddr) -> Self {
        Self {
            name: name.into(),
            addr,
        }
    }

    /// An endpoint named by its address (`"10.0.0.7:1883"`, `"[fd00::7]:1883"`): what A/AAAA discovery yields,
    /// since an A record carries no per-member name. Such a name changes when the member's IP changes.
    pub fn from_addr(addr: SocketAddr) -> Self {
        Self {
            name: addr.to_string(),
            addr,
        }
    }
}

/// How an SRV target becomes an endpoint name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NameFrom {
    /// The target's first label: `broker-0.broker.ns.svc.cluster.local.` → `broker-0` (a StatefulSet pod name).
    #[default]
    FirstLabel,
    /// The whole target without its trailing dot: `broker-0.broker.ns.svc.cluster.local`.
    Target,
}

impl NameFrom {
    /// The config spelling (`"first_label"`, `"target"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FirstLabel => "first_label",
            Self::Target => "target",
        }
    }
}

/// Where the members of a set come from.
///
/// Only [`Source::Static`] and [`Source::DnsSrv`] give names that survive a member changing its IP; A/AAAA
/// discovery names each endpoint `"<ip>:<port>"`, so a pod that is rescheduled with a new IP becomes a new ring
/// member. Use SRV (a Kubernetes headless Service publishes one SRV record per pod) when stable names matter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A fixed list.
    Static(Vec<Endpoint>),
    /// Every A and AAAA address of `name` (an FQDN with its trailing dot), each on `port`.
    DnsA {
        /// The name to resolve, absolute (`"broker.ns.svc.cluster.local."`).
        name: String,
        /// The port every address listens on.
        port: u16,
    },
    /// Every target of the SRV records of `name`, at the target's A/AAAA address and the record's port.
    DnsSrv {
        /// The SRV owner name, absolute (`"_mqtt._tcp.broker.ns.svc.cluster.local."`).
        name: String,
        /// How a target becomes the endpoint name.
        name_from: NameFrom,
    },
}

impl Source {
    /// A short description for metric labels and logs: `static`, `a:<name>` or `srv:<name>`. Bounded by config,
    /// so safe as a label.
    pub fn label(&self) -> String {
        match self {
            Self::Static(_) => "static".to_string(),
            Self::DnsA { name, .. } => format!("a:{name}"),
            Self::DnsSrv { name, .. } => format!("srv:{name}"),
        }
    }
}

/// Sorts by name and keeps one endpoint per name: the lowest address (IPv4 before IPv6), so that a dual-stack
/// SRV target, or two targets that share a first label, give one deterministic ring member.
pub fn normalize(mut endpoints: Vec<Endpoint>) -> Vec<Endpoint> {
    endpoints.sort();
    endpoints.dedup_by(|later, first| later.name == first.name);
    endpoints
}

/// Names present in `new` but not in `old`, and names present in `old` but not in `new` (both sorted inputs).
pub fn diff_names(old: &[Endpoint], new: &[Endpoint]) -> (Vec<String>, Vec<String>) {
    let added = new
        .iter()
        .filter(|e| old.binary_search_by(|o| o.name.cmp(&e.name)).is_err())
        .map(|e| e.name.clone())
        .collect();
    let removed = old
        .iter()
        .filter(|e| new.binary_search_by(|n| n.name.cmp(&e.name)).is_err())
        .map(|e| e.name.clone())
        .collect();
    (added, removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(name: &str, addr: &str) -> Endpoint {
        Endpoint::new(name, addr.parse().unwrap())
    }

    #[test]
    fn normalize_sorts_and_keeps_lowest_address_per_name() {
        let set = normalize(vec![
            ep("b", "10.0.0.2:1"),
            ep("a", "[fd00::1]:1"),
            ep("a", "10.0.0.9:1"),
            ep("b", "10.0.0.2:1"),
        ]);
        assert_eq!(set, vec![ep("a", "10.0.0.9:1"), ep("b", "10.0.0.2:1")]);
    }

    #[test]
    fn diff_reports_added_and_removed_names() {
        let old = vec![ep("a", "10.0.0.1:1"), ep("b", "10.0.0.2:1")];
        let new = vec![ep("b", "10.0.0.3:1"), ep("c", "10.0.0.4:1")];
        assert_eq!(
            diff_names(&old, &new),
            (vec!["c".to_string()], vec!["a".to_string()])
        );
    }

    #[test]
    fn address_names_and_labels() {
        let v6: SocketAddr = "[fd00::7]:1883".parse().unwrap();
        assert_eq!(Endpoint::from_addr(v6).name, "[fd00::7]:1883");
        let srv = Source::DnsSrv {
            name: "_mqtt._tcp.b.test.".into(),
            name_from: NameFrom::Target,
        };
        assert_eq!(srv.label(), "srv:_mqtt._tcp.b.test.");
        assert_eq!(Source::Static(vec![]).label(), "static");
    }
}
