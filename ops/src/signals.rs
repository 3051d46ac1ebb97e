//! signals (filled in by the ops work).
