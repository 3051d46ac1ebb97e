//! Rendezvous hashing (filled in by the ring work).
