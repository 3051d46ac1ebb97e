//! The LB's own admin routes, served by `fleetgate_ops::admin` beside `/healthz`, `/readyz` and `/metrics`:
//! `GET /clients/{client_id}` answers which backend that client ID is pinned to now.

use std::sync::Arc;
use std::time::Instant;

use fleetgate_ops::admin::{AdminRequest, AdminResponse, AdminRoutes, RouteFuture};

use crate::server::Shared;

/// Routes backed by the LB's shared state.
pub struct LbRoutes {
    shared: Arc<Shared>,
}

impl LbRoutes {
    /// Routes reading `shared`.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    fn client(&self, client_id: &str) -> AdminResponse {
        let snapshot = self.shared.snapshot.load();
        let ranked = snapshot
            .backends
            .pick(client_id.as_bytes(), &[], Instant::now());
        match ranked {
            Some(backend) => AdminResponse::json(
                200,
                serde_json::json!({
                    "client_id": client_id,
                    "backend": backend.name(),
                    "address": backend.config.address,
                    "suspect": backend.is_suspect(Instant::now()),
                }),
            ),
            None => AdminResponse::json(
                503,
                serde_json::json!({ "client_id": client_id, "backend": null }),
            ),
        }
    }
}

impl AdminRoutes for LbRoutes {
    fn handle(&self, req: AdminRequest) -> RouteFuture<'_> {
        Box::pin(async move {
            let id = req.path.strip_prefix("/clients/")?;
            if req.method != "GET" {
                return Some(AdminResponse::text(405, "method not allowed\n"));
            }
            Some(self.client(&percent_decode(id)?))
        })
    }
}

/// Decodes `%XX` escapes (client IDs may hold `/`, spaces, ...); `None` for a bad escape or invalid UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_escapes() {
        assert_eq!(percent_decode("a%2Fb%20c").as_deref(), Some("a/b c"));
        assert_eq!(percent_decode("plain").as_deref(), Some("plain"));
        assert_eq!(percent_decode("bad%2"), None);
        assert_eq!(percent_decode("%ff"), None);
    }
}
