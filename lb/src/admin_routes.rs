//! The LB's own admin routes, served by `fleetgate_ops::admin` beside `/healthz`, `/readyz` and `/metrics`:
//! - `GET /clients/{client_id}`: the backend that client ID is pinned to now, and whether (and to which backend)
//!   it is connected through this LB right now;
//! - `GET /backends`: every backend of the snapshot in force — address, stable name, source, health, suspect
//!   mark, connections;
//! - `POST /reload`: reload the config file (200 with the new generation, or 400 with every problem);
//! - `POST /drain`: start the drain, as SIGTERM does (202).

use std::sync::Arc;
use std::time::Instant;

use fleetgate_ops::admin::{AdminRequest, AdminResponse, AdminRoutes, RouteFuture, percent_decode};

use crate::shared::Shared;

/// Routes backed by the LB's shared state.
pub(crate) struct LbRoutes {
    shared: Arc<Shared>,
}

impl LbRoutes {
    /// Routes reading `shared`.
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    fn client(&self, client_id: &str) -> AdminResponse {
        let snapshot = self.shared.snapshot.load();
        let now = Instant::now();
        let connected = self.shared.registry.client(client_id);
        let connection = serde_json::json!({
            "connected": connected.is_some(),
            "connections": connected.as_ref().map_or(0, |c| c.connections),
            "connected_backend": connected.as_ref().map(|c| c.backend.clone()),
        });
        match snapshot.backends.pick(client_id.as_bytes(), &[], now) {
            Some(backend) => {
                let mut body = serde_json::json!({
                    "client_id": client_id,
                    "backend": backend.name(),
                    "address": backend.config.address,
                    "suspect": backend.is_suspect(now),
                    "health": backend.health.label(),
                });
                merge(&mut body, connection);
                AdminResponse::json(200, body)
            }
            None => {
                let mut body = serde_json::json!({ "client_id": client_id, "backend": null });
                merge(&mut body, connection);
                AdminResponse::json(503, body)
            }
        }
    }

    fn backends(&self) -> AdminResponse {
        let snapshot = self.shared.snapshot.load();
        let now = Instant::now();
        let list: Vec<serde_json::Value> = snapshot
            .backends
            .all()
            .iter()
            .map(|b| {
                serde_json::json!({
                    "name": b.name(),
                    "address": b.config.address,
                    "source": b.source,
                    "weight": b.config.weight,
                    "check": b.config.health.kind.as_str(),
                    "health": b.health.label(),
                    "healthy": b.is_healthy(),
                    "suspect": b.is_suspect(now),
                    "connections": b.active(),
                    "drain_on_removal": b.config.drain,
                })
            })
            .collect();
        AdminResponse::json(
            200,
            serde_json::json!({ "generation": snapshot.generation, "backends": list }),
        )
    }
}

fn merge(into: &mut serde_json::Value, from: serde_json::Value) {
    if let (Some(into), serde_json::Value::Object(from)) = (into.as_object_mut(), from) {
        into.extend(from);
    }
}

impl AdminRoutes for LbRoutes {
    fn handle(&self, req: AdminRequest) -> RouteFuture<'_> {
        Box::pin(async move {
            match (req.method.as_str(), req.path.as_str()) {
                ("GET", "/backends") => return Some(self.backends()),
                ("POST", "/reload") => {
                    return Some(match self.shared.reload().await {
                        Ok(generation) => AdminResponse::json(
                            200,
                            serde_json::json!({ "result": "ok", "generation": generation }),
                        ),
                        Err(e) => AdminResponse::json(
                            400,
                            serde_json::json!({ "result": "error", "error": e }),
                        ),
                    });
                }
                ("POST", "/drain") => {
                    self.shared.drain_requested.cancel();
                    return Some(AdminResponse::json(
                        202,
                        serde_json::json!({ "result": "draining" }),
                    ));
                }
                (_, "/backends" | "/reload" | "/drain") => {
                    return Some(AdminResponse::text(405, "method not allowed\n"));
                }
                _ => {}
            }
            let id = req.path.strip_prefix("/clients/")?;
            if req.method != "GET" {
                return Some(AdminResponse::text(405, "method not allowed\n"));
            }
            Some(match percent_decode(id) {
                Some(id) => self.client(&id),
                None => AdminResponse::text(400, "invalid %-escape in client ID\n"),
            })
        })
    }
}
