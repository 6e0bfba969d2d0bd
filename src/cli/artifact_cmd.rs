//! `tessera artifact push FILE --app A --version V`: the package goes to the control
//! nodes (`PUT /api/v1/blobs/<sha256>`, copied to every member), then an `artifacts`
//! resource names it.

use super::args::ArtifactCommand;
use super::client_cmd::block_on;
use super::EXIT_BAD_INPUT;
use crate::api::ClientError;
use crate::model::{Kind, Resource};
use sha2::{Digest, Sha256};
use std::process::ExitCode;
use std::time::Duration;

pub fn artifact(cmd: ArtifactCommand) -> ExitCode {
    let ArtifactCommand::Push {
        file,
        app,
        version,
        name,
        client,
    } = cmd;
    let name = name.unwrap_or_else(|| default_name(&app, &version));
    for (field, v) in [("--app", &app), ("--name", &name)] {
        if let Err(e) = crate::model::check_name(field, v) {
            eprintln!("error: {field}: {}", e.message);
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    }
    let bytes = match std::fs::read(&file) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {}: {e}", file.display());
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    let sha = crate::util::hex(&Sha256::digest(&bytes));
    let size = bytes.len();
    eprintln!(
        "pushing {} ({:.1} MiB, sha256 {sha}) ...",
        file.display(),
        size as f64 / 1_048_576.0
    );
    block_on(
        |c| async move {
            let (status, body) = c
                .clone()
                .with_timeout(Duration::from_secs(600))
                .send(
                    http::Method::PUT,
                    &format!("/api/v1/blobs/{sha}"),
                    Some(bytes),
                )
                .await?;
            if !status.is_success() {
                return Err(crate::api::api_error(status, &body));
            }
            let stored: serde_json::Value = serde_json::from_slice(&body)
                .map_err(|e| ClientError::Local(format!("bad answer: {e}")))?;
            let (copies, members) = (stored["copies"].as_u64(), stored["members"].as_u64());
            eprintln!(
                "stored on {}/{} control nodes",
                copies.unwrap_or(0),
                members.unwrap_or(0)
            );
            if let Some(failed) = stored["failed"].as_array().filter(|f| !f.is_empty()) {
                for f in failed {
                    eprintln!("warning: not copied to {}", f.as_str().unwrap_or(""));
                }
            }
            let obj = Resource::new(
                Kind::Artifact,
                &name,
                serde_json::json!({"app": app, "version": version, "sha256": sha, "size": size}),
            );
            let applied = c.put(Kind::Artifact, &obj).await?;
            println!(
                "artifact/{name} (app {app}, version {version}) at revision {}",
                applied.metadata.revision.unwrap_or(0)
            );
            Ok(())
        },
        &client,
    )
}

/// `APP-VERSION` as a resource name: lowercase, anything but letters and digits a dash.
fn default_name(app: &str, version: &str) -> String {
    let raw = format!("{app}-{version}").to_ascii_lowercase();
    let mut out = String::new();
    for c in raw.chars() {
        let c = if c.is_ascii_alphanumeric() { c } else { '-' };
        if !(c == '-' && out.ends_with('-')) {
            out.push(c);
        }
    }
    out.trim_matches('-').chars().take(63).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn default_names_are_resource_names() {
        assert_eq!(super::default_name("shop", "1.2.0"), "shop-1-2-0");
        assert_eq!(
            super::default_name("shop", "V2_rc.1+build"),
            "shop-v2-rc-1-build"
        );
    }
}
