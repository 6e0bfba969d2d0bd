//! # tessera
//!
//! One binary, four roles chosen by profile: **control** (replicated metadata store, REST
//! API, console, reconcilers), **gateway** (L7 entrance routing each user to their unit),
//! **agent** (VM-mode workloads, logs, Kubernetes node bootstrap on every machine) and
//! **dbproxy** (MySQL protocol, sharding and read/write splitting along the same units).
//!
//! # Layout
//!
//! - [`cli`]: clap commands; `main.rs` calls [`cli::run`].
//! - [`app`]: the composition root: bind enabled roles, announce, run, drain on signal.
//! - [`config`]: figment chain -> user config -> validation -> [`config::RuntimeConfig`].
//! - [`role`]: the shape every role shares ([`role::Bound`], [`role::RoleError`]).
//! - [`control`], [`gateway`], [`agent`], [`dbproxy`]: one home per role; roles never
//!   import each other, they talk through the control API as they would across machines.
//! - [`api`]: the typed client of the control API (CLI, roles, tests).
//! - [`admin`]: `/healthz`, `/readyz`, `/metrics` for every role.
//! - [`telemetry`]: logging, the metrics registry, build information.
//! - [`net`]: name resolution safe in a static binary, control-plane probes.
//! - [`pki`]: the cluster CA, node certificates, mutual-TLS configurations.
//! - [`util`]: randomness and hex.
//!
//! ARCHITECTURE.md is the longer map, with the rules on who may import what.

#![forbid(unsafe_code)]

pub mod admin;
pub mod agent;
pub mod api;
pub mod app;
pub mod cli;
pub mod config;
pub mod control;
pub mod dbproxy;
pub mod gateway;
pub mod model;
pub mod net;
pub mod pki;
pub mod role;
pub mod telemetry;
pub mod util;
