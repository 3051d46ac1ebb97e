//! Reading the first CONNECT packet (filled in by the LB work).
