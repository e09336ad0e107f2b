//! Hawking's enricher: the time-indexed history of who held which address, and the
//! point-in-time attribution of flows against it.
