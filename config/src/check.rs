//! `fleetgate check` (filled in by the ops work).
