//! The typed client of the control API, used by the CLI, the roles and the tests.

mod client;

pub use client::{api_error, Client, ClientError};
