//! The broker node config (filled in by the broker work).
