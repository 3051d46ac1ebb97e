//! [`Admin`]: the admin port of a node or an LB under test (a child process or one started in process), asked
//! what an operator would ask — `/metrics` samples, `/clients/{id}`, `/readyz`, the LB's `/backends` — and waited
//! on with [`crate::eventually`] until it says what a test expects.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;

use crate::http::{self, Response, Sample};
use crate::wait::{WAIT, eventually};

/// The admin HTTP server at `addr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admin {
    /// Where the admin server listens.
    pub addr: SocketAddr,
}

impl Admin {
    /// The admin server at `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr }
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Response {
        http::get(self.addr, path).await
    }

    /// `POST path` with an empty body (`/reload`, `/drain`).
    pub async fn post(&self, path: &str) -> Response {
        http::post(self.addr, path).await
    }

    /// `method path` with `Authorization: Bearer <token>` when `token` is given (an admin port with a token file).
    pub async fn request_as(&self, method: &str, path: &str, token: Option<&str>) -> Response {
        let header = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        http::request_with_headers(self.addr, method, path, &header).await
    }

    /// `GET path` parsed as JSON; 200 or 503 (a draining LB answers 503 with a body).
    pub async fn json(&self, path: &str) -> Value {
        let r = self.get(path).await;
        assert!(
            r.status == 200 || r.status == 503,
            "{path}: HTTP {} {}",
            r.status,
            r.body
        );
        serde_json::from_str(&r.body)
            .unwrap_or_else(|e| panic!("{path}: HTTP {} not JSON ({e}): {}", r.status, r.body))
    }

    /// The parsed `/metrics`.
    pub async fn metrics(&self) -> Vec<Sample> {
        let r = self.get("/metrics").await;
        assert_eq!(r.status, 200, "/metrics: {}", r.body);
        http::parse_metrics(&r.body)
    }

    /// Sum of the `name` samples whose labels include every pair of `labels`.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        http::metric_sum(&self.metrics().await, name, labels)
    }

    /// Waits until `check(metric(name, labels))` holds and returns that value; panics with `/metrics` after
    /// `deadline` (counters are often recorded just after the client saw the effect).
    pub async fn wait_metric(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        deadline: Duration,
        check: impl Fn(f64) -> bool,
    ) -> f64 {
        let reached = eventually(deadline, || async {
            let value = self.metric(name, labels).await;
            check(value).then_some(value)
        })
        .await;
        match reached {
            Ok(value) => value,
            Err(e) => {
                let body = self.get("/metrics").await.body;
                panic!("{name}{labels:?} on {}: {e}; /metrics:\n{body}", self.addr)
            }
        }
    }

    /// Waits (up to [`WAIT`]) until counter `name{labels}` reaches `at_least`; returns its value.
    pub async fn wait_count(&self, name: &str, labels: &[(&str, &str)], at_least: f64) -> f64 {
        self.wait_metric(name, labels, WAIT, |v| v >= at_least)
            .await
    }

    /// Waits (up to [`WAIT`]) until gauge `name{labels}` is `value`.
    pub async fn wait_gauge(&self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.wait_metric(name, labels, WAIT, |v| v == value).await;
    }

    /// `GET /clients/{id}`: `None` on 404, else the JSON body.
    pub async fn client(&self, client_id: &str) -> Option<Value> {
        let r = self.get(&format!("/clients/{client_id}")).await;
        match r.status {
            404 => None,
            200 => Some(
                serde_json::from_str(&r.body)
                    .unwrap_or_else(|e| panic!("/clients/{client_id}: {e}: {}", r.body)),
            ),
            other => panic!("/clients/{client_id}: HTTP {other}: {}", r.body),
        }
    }

    /// Whether `/clients/{id}` says the client is connected.
    pub async fn is_connected(&self, client_id: &str) -> bool {
        self.client(client_id)
            .await
            .is_some_and(|c| c["connected"] == Value::Bool(true))
    }

    /// Waits until `/clients/{id}` reports `connected == want`.
    pub async fn wait_connected(&self, client_id: &str, want: bool, deadline: Duration) {
        let ok = eventually(deadline, || async {
            (self.is_connected(client_id).await == want).then_some(())
        })
        .await;
        if ok.is_err() {
            let state = self.client(client_id).await;
            panic!(
                "client {client_id:?}: connected != {want} within {deadline:?}; /clients says {state:?}"
            );
        }
    }

    /// Whether `/readyz` answers 200.
    pub async fn is_ready(&self) -> bool {
        self.get("/readyz").await.status == 200
    }

    /// Waits for `/readyz` to be `want`; panics after `deadline`.
    pub async fn wait_ready(&self, want: bool, deadline: Duration) {
        let ok = eventually(deadline, || async {
            (self.is_ready().await == want).then_some(())
        })
        .await;
        assert!(
            ok.is_ok(),
            "{}: /readyz != {want} within {deadline:?}",
            self.addr
        );
    }

    /// The LB's `/backends` list.
    pub async fn backends(&self) -> Vec<Value> {
        let r = self.get("/backends").await;
        assert_eq!(r.status, 200, "/backends: {}", r.body);
        let v: Value = serde_json::from_str(&r.body).expect("/backends is JSON");
        v["backends"].as_array().cloned().unwrap_or_default()
    }

    /// The LB's `/backends` entry of backend `name`.
    pub async fn backend(&self, name: &str) -> Value {
        let all = self.backends().await;
        all.iter()
            .find(|b| b["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no backend {name:?} in {all:?}"))
    }

    /// The `health` of the LB's backend `name` (`"unknown"`, `"up"`, `"down"`).
    pub async fn health(&self, name: &str) -> String {
        self.backend(name).await["health"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Waits until the LB's backend `name` has health `want`; panics with its `/backends` entry after `deadline`.
    pub async fn wait_health(&self, name: &str, want: &str, deadline: Duration) {
        let ok = eventually(deadline, || async {
            (self.health(name).await == want).then_some(())
        })
        .await;
        if ok.is_err() {
            panic!(
                "backend {name:?} not {want} within {deadline:?}: {}",
                self.backend(name).await
            );
        }
    }

    /// The backend the LB pins `client_id` to now (`/clients/{id}` of the LB).
    pub async fn pinned(&self, client_id: &str) -> String {
        self.json(&format!("/clients/{client_id}")).await["backend"]
            .as_str()
            .unwrap_or_else(|| panic!("the LB pins {client_id:?} nowhere"))
            .to_string()
    }
}
