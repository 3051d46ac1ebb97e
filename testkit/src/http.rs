//! A tiny HTTP/1.1 client for the admin ports (`GET /metrics`, `/healthz`, `/clients/{id}`, `POST /reload`, ...)
//! and Prometheus text parsing, so that tests read what an operator would read; [`crate::admin`] builds the
//! questions tests ask on top of it.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bound on one admin request: the admin server answers from memory.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// An HTTP response: status code and body text.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code (`200`, `404`, ...).
    pub status: u16,
    /// Body, decoded from chunked transfer encoding when needed.
    pub body: String,
}

/// `GET path` on `addr`; panics on I/O errors or timeout.
pub async fn get(addr: SocketAddr, path: &str) -> Response {
    request(addr, "GET", path).await
}

/// `POST path` on `addr` with an empty body (`/reload`, `/drain`); panics on I/O errors or timeout.
pub async fn post(addr: SocketAddr, path: &str) -> Response {
    request(addr, "POST", path).await
}

/// `method path` on `addr` with `Connection: close`, read to EOF; panics on I/O errors or timeout.
pub async fn request(addr: SocketAddr, method: &str, path: &str) -> Response {
    request_with_headers(addr, method, path, "").await
}

/// Like [`request`], with extra header lines (each ending in `\r\n`, e.g. `Authorization: Bearer t\r\n`).
pub async fn request_with_headers(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
) -> Response {
    let body_length = if method == "GET" {
        ""
    } else {
        "Content-Length: 0\r\n"
    };
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{headers}{body_length}\r\n"
        );
        stream.write_all(head.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(HTTP_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| panic!("{method} http://{addr}{path}: timed out"))
        .unwrap_or_else(|e| panic!("{method} http://{addr}{path}: {e}"));
    parse_response(&raw)
        .unwrap_or_else(|| panic!("{method} http://{addr}{path}: unparsable response {raw:?}"))
}

fn parse_response(raw: &[u8]) -> Option<Response> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase().starts_with("transfer-encoding:")
            && l.to_ascii_lowercase().contains("chunked")
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_string()
    };
    Some(Response { status, body })
}

fn dechunk(mut rest: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n")?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(after.get(..size)?);
        rest = after.get(size..)?.strip_prefix("\r\n")?;
    }
}

/// One sample of a Prometheus text exposition: metric name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name, e.g. `fleetgate_connections_total`.
    pub name: String,
    /// Label pairs in the order written.
    pub labels: Vec<(String, String)>,
    /// The value.
    pub value: f64,
}

impl Sample {
    /// The value of label `key`, if present.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The series as written: `name{k="v",...}`.
    pub fn series(&self) -> String {
        let labels: Vec<String> = self
            .labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{v}\""))
            .collect();
        format!("{}{{{}}}", self.name, labels.join(","))
    }
}

/// Parses Prometheus text (comments skipped; label values without escaped quotes, which is all we emit).
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(parse_sample)
        .collect()
}

fn parse_sample(line: &str) -> Option<Sample> {
    let (series, value) = line.trim().rsplit_once(' ')?;
    let value = value.parse().ok()?;
    let (name, labels) = match series.split_once('{') {
        Some((name, rest)) => (name, rest.strip_suffix('}')?),
        None => (series, ""),
    };
    let labels = labels
        .split("\",")
        .filter(|p| !p.is_empty())
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            Some((k.trim().to_string(), v.trim_matches('"').to_string()))
        })
        .collect();
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// Sum of the samples named `name` whose labels include every pair of `labels`.
pub fn metric_sum(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(v)))
        .map(|s| s.value)
        .sum()
}

/// The series whose value grew from `before` to `after` (new series count from zero), with the growth.
pub fn increased(before: &[Sample], after: &[Sample]) -> Vec<(String, f64)> {
    after
        .iter()
        .filter_map(|a| {
            let series = a.series();
            let old = before
                .iter()
                .find(|b| b.series() == series)
                .map_or(0.0, |b| b.value);
            (a.value > old).then_some((series, a.value - old))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prometheus_text() {
        let text = "# TYPE x counter\nfleetgate_a_total{reason=\"proxy\",listener=\"mqtt\"} 3\nfleetgate_b 1.5\n";
        let samples = parse_metrics(text);
        assert_eq!(samples.len(), 2);
        assert_eq!(samples[0].label("listener"), Some("mqtt"));
        assert_eq!(
            metric_sum(&samples, "fleetgate_a_total", &[("reason", "proxy")]),
            3.0
        );
        assert_eq!(metric_sum(&samples, "fleetgate_b", &[]), 1.5);
        let later = parse_metrics(
            "fleetgate_a_total{reason=\"proxy\",listener=\"mqtt\"} 5\nfleetgate_b 1.5\n",
        );
        assert_eq!(
            increased(&samples, &later),
            vec![(
                "fleetgate_a_total{reason=\"proxy\",listener=\"mqtt\"}".into(),
                2.0
            )]
        );
    }

    #[test]
    fn parses_chunked_response() {
        let raw = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n1\r\n!\r\n0\r\n\r\n";
        let r = parse_response(raw).unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "hello!"));
    }
}
