//! Integration tests: the real `tessera` binary, started as separate processes on
//! 127.0.0.1 with every listener on port 0, found through `<data_dir>/listeners.json`.

mod harness;
mod workload;

mod agent;
mod api_tls;
mod artifacts;
mod backup;
mod cli;
mod cluster;
mod config_errors;
mod console;
mod dbproxy;
mod disk_full;
mod faults;
mod fuzz;
mod gateway;
mod kv_api;
mod leases;
mod lifecycle;
mod lincheck;
mod log_sinks;
mod logs;
mod mariadb;
mod raft_channel;
mod relay;
mod resources;
mod static_binary;
mod websocket;
