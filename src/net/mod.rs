//! Networking helpers shared by roles and the CLI.

pub mod probe;
pub mod resolve;
