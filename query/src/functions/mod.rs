//! SQL functions Hawking adds to every session. Addresses are stored as text (`src_ip`,
//! `dst_ip`, `exporter`, `ip_history.ip`), so the network functions take text and parse it
//! per row without allocating; constant arguments (the CIDR in `cidr_contains('10.0.0.0/8',
//! src_ip)`) are parsed once per batch.

pub mod identifiers;
pub mod network;

use datafusion::prelude::SessionContext;

/// Registers every Hawking scalar function in `ctx`.
pub fn register(ctx: &SessionContext) {
    for udf in network::udfs().into_iter().chain(identifiers::udfs()) {
        ctx.register_udf(udf);
    }
}
