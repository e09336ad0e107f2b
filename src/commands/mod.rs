//! One module per subcommand: its arguments and what it does with them.

pub mod flowgen;
pub mod history;
pub mod nat_agent;
pub mod replay;
pub mod serve;
pub mod sql;
pub mod store;
pub mod whois;
