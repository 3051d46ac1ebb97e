//! The load balancer config (filled in by the LB work).
