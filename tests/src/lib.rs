//! End-to-end tests of the live balancer over loopback (being built: see issue 5).
