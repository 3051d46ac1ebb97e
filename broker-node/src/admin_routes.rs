//! The node's admin routes beside `/healthz`, `/readyz`, `/metrics`: `GET /clients/{client_id}` (which node a
//! client is on, for operators and the end-to-end tests).

use std::sync::Arc;

use fleetgate_ops::admin::{AdminRequest, AdminResponse, AdminRoutes, RouteFuture, percent_decode};
use serde_json::json;

use crate::broker::{Broker, ClientInfo};

/// Path prefix of the client lookup.
const CLIENTS_PREFIX: &str = "/clients/";

/// Routes served from the broker state.
#[derive(Debug)]
pub(crate) struct NodeRoutes {
    broker: Arc<Broker>,
}

impl NodeRoutes {
    /// Routes answering from `broker`.
    pub(crate) fn new(broker: Arc<Broker>) -> NodeRoutes {
        NodeRoutes { broker }
    }

    /// Answers a request synchronously (the broker state is in memory).
    pub(crate) fn respond(&self, method: &str, path: &str) -> Option<AdminResponse> {
        let id = path.strip_prefix(CLIENTS_PREFIX)?;
        if method != "GET" {
            return Some(AdminResponse::json(
                405,
                json!({"error": "method not allowed"}),
            ));
        }
        let Some(id) = percent_decode(id) else {
            return Some(AdminResponse::json(
                400,
                json!({"error": "invalid %-escape in client ID"}),
            ));
        };
        Some(match self.broker.client_info(&id) {
            Some(info) => {
                AdminResponse::json(200, client_json(self.broker.node_name(), &id, &info))
            }
            None => AdminResponse::json(
                404,
                json!({"client_id": id, "node": self.broker.node_name(), "error": "no such session"}),
            ),
        })
    }
}

impl AdminRoutes for NodeRoutes {
    fn handle(&self, req: AdminRequest) -> RouteFuture<'_> {
        let response = self.respond(&req.method, &req.path);
        Box::pin(async move { response })
    }
}

fn client_json(node: &str, id: &str, info: &ClientInfo) -> serde_json::Value {
    json!({
        "client_id": id,
        "node": node,
        "connected": info.connected,
        "protocol": info.protocol.to_string(),
        "source": info.source.map(|s| s.to_string()),
        "subscriptions": info.subscriptions,
        "queued": info.queued,
        "inflight": info.inflight,
        "session_expiry": info.session_expiry,
    })
}
