//! admin (filled in by the ops work).
