//! The ingress router (being written).
