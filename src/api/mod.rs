//! The typed client of the control API, used by the CLI, the roles and the tests:
//! `client.rs` the transport and errors, `enroll.rs` the exchange of a join token over
//! TLS to the leader (CA pinned by the token), `feed.rs` a role's list + watch of its
//! input kinds with an on-disk cache, `logs.rs` collected log lines, their query and the
//! read grant control nodes show agents, `resources.rs` the resource API, users and
//! the audit trail (types from `crate::model`).

mod client;
pub mod enroll;
pub mod feed;
pub mod logs;
mod resources;

pub use client::{api_error, trust_ca, trusted_ca, Client, ClientError};
pub use resources::{ApplyOutcome, ApplyResult, AuditPage, List, NewToken};
