//! Client commands: talk to the control API with the typed client.

use super::args::{ClientArgs, MembersArgs, MembersCommand, TokenCommand};
use super::{EXIT_BAD_INPUT, EXIT_FAILED};
use crate::api::{Client, ClientError};
use http::Method;
use serde_json::{json, Value};
use std::future::Future;
use std::process::ExitCode;

/// Runs one client operation on a small runtime and maps its error to an exit code.
pub(super) fn block_on<F: Future<Output = Result<(), ClientError>>>(
    f: impl FnOnce(Client) -> F,
    args: &ClientArgs,
) -> ExitCode {
    let token = args.token.clone().or_else(|| {
        std::fs::read_to_string(args.data_dir.join("admin.token"))
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
    });
    if args.server.starts_with("https://") {
        let default = args.data_dir.join("control").join("pki").join("ca.pem");
        let path = args.ca.clone().unwrap_or(default);
        // Without a readable CA, Client::new below says what to pass.
        if args.ca.is_some() || path.exists() {
            let trusted = std::fs::read_to_string(&path)
                .map_err(|e| e.to_string())
                .and_then(|pem| crate::api::trust_ca(&pem));
            if let Err(e) = trusted {
                eprintln!("error: --ca {}: {e}", path.display());
                return ExitCode::from(EXIT_BAD_INPUT);
            }
        }
    }
    let client = match Client::new(&args.server, token) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    match rt.block_on(f(client)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            if e.status() == Some(401) {
                eprintln!("hint: pass --token, set TESSERA_TOKEN, or point --data-dir at the directory holding admin.token");
            }
            ExitCode::from(if e.is_bad_input() {
                EXIT_BAD_INPUT
            } else {
                EXIT_FAILED
            })
        }
    }
}

pub fn token(cmd: TokenCommand) -> ExitCode {
    match cmd {
        TokenCommand::Create(a) => {
            let body = json!({"role": a.role, "ttl_secs": a.ttl});
            block_on(
                |c| async move {
                    let v: Value = c.call(Method::POST, "/api/v1/tokens", Some(&body)).await?;
                    println!("{}", v["token"].as_str().unwrap_or_default());
                    eprintln!(
                        "single-use {} join token, expires at unix time {}",
                        v["role"].as_str().unwrap_or("?"),
                        v["expires_at"]
                    );
                    Ok(())
                },
                &a.client,
            )
        }
    }
}

pub fn members(a: MembersArgs) -> ExitCode {
    let output = a.output.clone();
    match a.command {
        None => block_on(
            |c| async move {
                let v: Value = c.call(Method::GET, "/api/v1/members", None::<&()>).await?;
                if output == "json" {
                    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                } else {
                    print_members(&v);
                }
                Ok(())
            },
            &a.client,
        ),
        Some(MembersCommand::Remove { name }) => block_on(
            |c| async move {
                let path = format!("/api/v1/members/{name}");
                let _: Value = c.call(Method::DELETE, &path, None::<&()>).await?;
                println!("removed {name}");
                Ok(())
            },
            &a.client,
        ),
    }
}

fn print_members(v: &Value) {
    println!(
        "cluster {}  term {}  leader {}",
        v["cluster_id"].as_str().unwrap_or("?"),
        v["term"],
        v["leader"].as_str().unwrap_or("none")
    );
    println!(
        "{:<16} {:<20} {:<8} {:<7} {:<8} {:>8} {:>6}  PEER",
        "NAME", "ID", "ROLE", "LEADER", "ZONE", "MATCHED", "LAG"
    );
    for m in v["members"].as_array().into_iter().flatten() {
        let opt = |x: &Value| {
            x.as_u64()
                .map(|n| n.to_string())
                .unwrap_or_else(|| "-".into())
        };
        println!(
            "{:<16} {:<20} {:<8} {:<7} {:<8} {:>8} {:>6}  {}",
            m["name"].as_str().unwrap_or("?"),
            m["id"].as_str().unwrap_or("?"),
            m["role"].as_str().unwrap_or("?"),
            if m["leader"].as_bool() == Some(true) {
                "*"
            } else {
                ""
            },
            m["zone"].as_str().unwrap_or("-"),
            opt(&m["matched_index"]),
            opt(&m["lag"]),
            m["peer"].as_str().unwrap_or("?"),
        );
    }
}
