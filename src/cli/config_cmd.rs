//! `tessera config check`.

use super::args::ConfigCommand;
use super::EXIT_BAD_INPUT;
use crate::config::{self, Overrides, Source};
use std::process::ExitCode;

pub fn run(cmd: ConfigCommand) -> ExitCode {
    match cmd {
        ConfigCommand::Check(a) => {
            let source = Source::Profile(a.profile.clone());
            match config::resolve(&source, &Overrides(a.set)) {
                Ok(cfg) => {
                    let roles: Vec<&str> = cfg.roles.iter().map(|r| r.as_str()).collect();
                    println!(
                        "ok: {} is valid (node {}, roles: {})",
                        a.profile.display(),
                        cfg.node_name,
                        roles.join(", ")
                    );
                    if a.print {
                        match toml::to_string_pretty(&cfg) {
                            Ok(s) => print!("{s}"),
                            Err(e) => eprintln!("cannot print the configuration: {e}"),
                        }
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprint!("{e}");
                    ExitCode::from(EXIT_BAD_INPUT)
                }
            }
        }
    }
}
