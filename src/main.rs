//! `tessera`: parse the command line and hand over to the library.

use clap::Parser;
use std::process::ExitCode;

/// mimalloc rather than glibc's malloc: the gateway's and the store's hot paths allocate
/// many small short-lived buffers, where it measured faster (bench/README.md). Built with
/// `no_thp`: otherwise it asks for transparent huge pages on its arena, and every 2 MiB
/// region the heap touches becomes resident (an idle agent: 10 of its 13.8 MiB private).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = match tessera::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints help and version to stdout (exit 0) and usage errors to stderr (exit 2).
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    tessera::cli::run(cli)
}
