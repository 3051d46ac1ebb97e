//! PROXY protocol v1/v2 (filled in by the proxy work).
