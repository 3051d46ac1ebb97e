//! A stub DNS server on a UDP socket at 127.0.0.1:0 for the discovery crate's tests and the process tests:
//! hickory-proto decodes the queries and encodes the answers; tests change the zone (A/AAAA and
//! SRV records, as a Kubernetes headless Service would publish them), or make the server fail, while the
//! processes under test discover against it (`nameserver = "<addr>"`).

#![allow(clippy::unwrap_used)] // test code: a broken stub should fail the test at once

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Edns, Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// How the stub answers every query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// From the zone: records, NOERROR with no answer, or NXDOMAIN for unknown names.
    Answer,
    /// SERVFAIL.
    ServFail,
    /// NXDOMAIN, whatever the zone holds.
    NxDomain,
    /// No answer at all (the client times out).
    Silent,
}

#[derive(Debug)]
struct Zone {
    mode: Mode,
    records: Vec<Record>,
    /// SRV owner names whose answers carry their targets' addresses in the additional section.
    glue: Vec<Name>,
    queries: HashMap<(Name, RecordType), u64>,
}

/// A running stub server; stops when dropped.
pub struct StubDns {
    addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    task: JoinHandle<()>,
}

impl Drop for StubDns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn name(text: &str) -> Name {
    Name::from_ascii(text).unwrap().to_lowercase()
}

impl StubDns {
    /// Binds 127.0.0.1:0 and starts answering.
    pub async fn start() -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let zone = Arc::new(Mutex::new(Zone {
            mode: Mode::Answer,
            records: Vec::new(),
            glue: Vec::new(),
            queries: HashMap::new(),
        }));
        let task = tokio::spawn(serve(socket, zone.clone()));
        Self { addr, zone, task }
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replaces the A/AAAA records of `owner` with `ips` (an empty slice removes them).
    pub fn set_addresses(&self, owner: &str, ips: &[&str], ttl: u32) {
        let owner = name(owner);
        let mut zone = self.zone.lock().unwrap();
        zone.records.retain(|r| {
            !(r.name == owner && matches!(r.record_type(), RecordType::A | RecordType::AAAA))
        });
        for ip in ips {
            let data = match ip.parse::<IpAddr>().unwrap() {
                IpAddr::V4(v4) => RData::A(A(v4)),
                IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
            };
            zone.records
                .push(Record::from_rdata(owner.clone(), ttl, data));
        }
    }

    /// Replaces the SRV records of `owner` with `targets` (target, port); `glue` puts the targets' addresses in
    /// the additional section of the answer.
    pub fn set_srv(&self, owner: &str, targets: &[(&str, u16)], ttl: u32, glue: bool) {
        let owner = name(owner);
        let mut zone = self.zone.lock().unwrap();
        zone.records
            .retain(|r| !(r.name == owner && r.record_type() == RecordType::SRV));
        for (target, port) in targets {
            let srv = SRV::new(0, 10, *port, name(target));
            zone.records
                .push(Record::from_rdata(owner.clone(), ttl, RData::SRV(srv)));
        }
        zone.glue.retain(|g| *g != owner);
        if glue {
            zone.glue.push(owner);
        }
    }

    /// Sets how every following query is answered.
    pub fn set_mode(&self, mode: Mode) {
        self.zone.lock().unwrap().mode = mode;
    }

    /// Queries received for `owner` and `record_type` so far.
    pub fn queries(&self, owner: &str, record_type: RecordType) -> u64 {
        let zone = self.zone.lock().unwrap();
        zone.queries
            .get(&(name(owner), record_type))
            .copied()
            .unwrap_or(0)
    }
}

async fn serve(socket: UdpSocket, zone: Arc<Mutex<Zone>>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((len, peer)) = socket.recv_from(&mut buf).await else {
            return;
        };
        let Ok(request) = Message::from_vec(&buf[..len]) else {
            continue;
        };
        if request.metadata.message_type != MessageType::Query {
            continue;
        }
        let Some(response) = answer(&request, &zone) else {
            continue;
        };
        if let Ok(bytes) = response.to_vec() {
            let _ = socket.send_to(&bytes, peer).await;
        }
    }
}

fn answer(request: &Message, zone: &Mutex<Zone>) -> Option<Message> {
    let mut zone = zone.lock().unwrap();
    let mut response = Message::response(request.metadata.id, request.metadata.op_code);
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.metadata.authoritative = true;
    if request.edns.is_some() {
        response.set_edns(Edns::new());
    }
    for query in &request.queries {
        response.add_query(query.clone());
        let owner = query.name().to_lowercase();
        *zone
            .queries
            .entry((owner.clone(), query.query_type()))
            .or_default() += 1;
        match zone.mode {
            Mode::Silent => return None,
            Mode::ServFail => response.metadata.response_code = ResponseCode::ServFail,
            Mode::NxDomain => response.metadata.response_code = ResponseCode::NXDomain,
            Mode::Answer => {
                if !zone.records.iter().any(|r| r.name == owner) {
                    response.metadata.response_code = ResponseCode::NXDomain;
                    continue;
                }
                let mut answers: Vec<Record> = zone
                    .records
                    .iter()
                    .filter(|r| r.name == owner && r.record_type() == query.query_type())
                    .cloned()
                    .collect();
                // Echo the owner name as asked (0x20 case randomisation is off, but be faithful anyway).
                for record in &mut answers {
                    record.name = query.name().clone();
                }
                if zone.glue.contains(&owner) {
                    for srv in answers.iter().filter_map(|r| match &r.data {
                        RData::SRV(srv) => Some(srv.target.to_lowercase()),
                        _ => None,
                    }) {
                        let glue = zone.records.iter().filter(|r| {
                            r.name == srv
                                && matches!(r.record_type(), RecordType::A | RecordType::AAAA)
                        });
                        response.add_additionals(glue.cloned());
                    }
                }
                response.add_answers(answers);
            }
        }
    }
    Some(response)
}
