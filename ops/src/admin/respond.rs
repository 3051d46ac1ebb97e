//! Answering one admin request, the part of the server after the connection is admitted: the probes (on either
//! socket), `/metrics`, then — with the bearer token when one is set — the binary's routes. Also the token itself
//! (compared in constant time, never printed) and the small HTTP helpers the routes share.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{
    AUTHORIZATION, CONNECTION, CONTENT_TYPE, HeaderMap, HeaderValue, WWW_AUTHENTICATE,
};
use hyper::{Request, Response, StatusCode};

use super::probe::Heartbeat;
use super::{
    AdminRequest, AdminResponse, AdminState, Lane, MAX_BODY_BYTES, PROMETHEUS_CONTENT_TYPE, metrics,
};

/// The bearer token of an admin server; `Debug` shows `***`, so it never reaches a log line.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(String);

impl AdminToken {
    /// A token from its text (e.g. `fleetgate_config::lb::Secret::read_file(...)?.expose()`).
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }

    /// Whether `given` is this token. The time taken depends only on the token's length and whether `given` is
    /// shorter, never on where the first differing byte is, so the token cannot be guessed byte by byte.
    fn matches(&self, given: &[u8]) -> bool {
        let secret = self.0.as_bytes();
        let mut diff = given.len() ^ secret.len();
        for (i, s) in secret.iter().enumerate() {
            diff |= usize::from(given.get(i).copied().unwrap_or(0) ^ s);
        }
        std::hint::black_box(diff) == 0
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(***)")
    }
}

/// What one server answers from: the binary's state, its token, the deadline for request bodies, and the serving
/// runtime's heartbeat.
pub(crate) struct Responder {
    pub(crate) state: AdminState,
    pub(crate) token: Option<AdminToken>,
    pub(crate) body_timeout: Duration,
    pub(crate) heartbeat: Heartbeat,
}

impl Responder {
    /// Answers one request that arrived on `lane`.
    pub(crate) async fn respond(
        &self,
        lane: Lane,
        req: Request<Incoming>,
    ) -> Response<Full<Bytes>> {
        let (parts, body) = req.into_parts();
        let read = matches!(parts.method.as_str(), "GET" | "HEAD");
        let path = parts.uri.path();
        // The probes: constant answers on either socket, never a token.
        match (read, path) {
            (true, "/healthz") => {
                return into_http(if self.heartbeat.stalled() {
                    AdminResponse::text(503, "stalled\n")
                } else {
                    AdminResponse::text(200, "ok\n")
                });
            }
            (true, "/readyz") => {
                return into_http(if self.state.readiness.is_ready() {
                    AdminResponse::text(200, "ready\n")
                } else {
                    AdminResponse::text(503, "not ready\n")
                });
            }
            _ => {}
        }
        if lane == Lane::Probe {
            return into_http(not_found());
        }
        if read && path == "/metrics" {
            return into_http(AdminResponse {
                status: 200,
                content_type: PROMETHEUS_CONTENT_TYPE,
                body: self.state.metrics.render(),
            });
        }
        // Every other route mutates something or reveals clients or backends: the token, when one is set.
        if let Some(token) = &self.token
            && !bearer_matches(&parts.headers, token)
        {
            metrics::unauthorized();
            // Refused before the body is read; the header's value is never logged.
            tracing::warn!(event = "admin_unauthorized", method = %parts.method, path = %path, "admin request without a valid token");
            let mut out = closing(into_http(AdminResponse::text(401, "unauthorized\n")));
            out.headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return out;
        }
        let Some(routes) = self.state.routes.as_ref() else {
            return into_http(not_found());
        };
        let collected = tokio::time::timeout(
            self.body_timeout,
            Limited::new(body, MAX_BODY_BYTES).collect(),
        )
        .await;
        let body = match collected {
            Err(_elapsed) => {
                metrics::cut(lane, "request_timeout");
                return closing(into_http(AdminResponse::text(
                    408,
                    "request body not received in time\n",
                )));
            }
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(e)) => {
                // Limited reports an oversized body as its own error type; anything else is a broken connection.
                let status = if e.is::<http_body_util::LengthLimitError>() {
                    413
                } else {
                    400
                };
                return into_http(AdminResponse::text(status, "request body rejected\n"));
            }
        };
        let req = AdminRequest {
            method: parts.method.as_str().to_string(),
            path: path.to_string(),
            query: parts.uri.query().map(str::to_string),
            body,
        };
        into_http(routes.handle(req).await.unwrap_or_else(not_found))
    }
}

/// True when `headers` carry `Authorization: Bearer <token>` (scheme case-insensitive).
fn bearer_matches(headers: &HeaderMap, token: &AdminToken) -> bool {
    let Some((scheme, given)) = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
    else {
        return false;
    };
    scheme.eq_ignore_ascii_case("bearer") && token.matches(given.trim().as_bytes())
}

/// Marks a response as the connection's last (its request body may be unread).
fn closing(mut resp: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    resp.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// Decodes the `%XX` escapes of a URL path segment (client IDs may hold `/`, spaces, ...), for the routes of
/// every binary. `None` when a `%` is not followed by two hex digits or the result is not UTF-8: answer 400.
pub fn percent_decode(text: &str) -> Option<String> {
    fn hex(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            b'A'..=b'F' => Some(b - b'A' + 10),
            _ => None,
        }
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hi = hex(*bytes.get(i + 1)?)?;
            let lo = hex(*bytes.get(i + 2)?)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn not_found() -> AdminResponse {
    AdminResponse::text(404, "not found\n")
}

fn into_http(resp: AdminResponse) -> Response<Full<Bytes>> {
    let mut out = Response::new(Full::new(Bytes::from(resp.body)));
    *out.status_mut() =
        StatusCode::from_u16(resp.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    out.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(resp.content_type));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        let token = AdminToken::new("s3cret");
        assert!(token.matches(b"s3cret"));
        for wrong in [
            &b""[..],
            b"s3cre",
            b"s3cretx",
            b"S3cret",
            b"s3cre\0",
            b"\0\0\0\0\0\0",
        ] {
            assert!(!token.matches(wrong), "{wrong:?}");
        }
        assert_eq!(format!("{token:?}"), "AdminToken(***)");
    }
}
