//! Config file watcher (filled in by the ops work).
