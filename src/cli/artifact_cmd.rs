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

/// `tessera rollback APP [--to ARTIFACT]`: points the app back at an earlier artifact
/// through the same audited update as any change; the agents do the rest (a surge
/// upgrade, from the copy they kept).
pub fn rollback(a: super::args::RollbackArgs) -> ExitCode {
    let super::args::RollbackArgs { app, to, client } = a;
    block_on(
        |c| async move {
            let mut obj = c.get(Kind::App, &app).await?;
            let current = obj.spec["artifact"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let target = match to {
                Some(t) => {
                    c.get(Kind::Artifact, &t).await?;
                    t
                }
                None => previous(&c, &app, &current).await?,
            };
            if target == current {
                println!("app/{app} already runs artifact/{target}");
                return Ok(());
            }
            obj.spec["artifact"] = serde_json::json!(target);
            let after = c.put(Kind::App, &obj).await?;
            println!(
                "app/{app}: artifact/{current} -> artifact/{target} (revision {})",
                after.metadata.revision.unwrap_or(0)
            );
            Ok(())
        },
        &client,
    )
}

/// The app's artifact recorded just before `current` (by the revision it was created at).
async fn previous(c: &crate::api::Client, app: &str, current: &str) -> Result<String, ClientError> {
    let list = c.list(Kind::Artifact, None).await?;
    let mine: Vec<&Resource> = list.items.iter().filter(|r| r.spec["app"] == app).collect();
    let at = mine
        .iter()
        .find(|r| r.metadata.name == current)
        .and_then(|r| r.metadata.revision)
        .ok_or_else(|| {
            ClientError::Local(format!(
                "app {app} runs `{current}`, which is not one of its pushed artifacts: name one with --to"
            ))
        })?;
    mine.iter()
        .filter(|r| r.metadata.revision.is_some_and(|rev| rev < at))
        .max_by_key(|r| r.metadata.revision)
        .map(|r| r.metadata.name.clone())
        .ok_or_else(|| {
            ClientError::Local(format!("app {app} has no artifact older than `{current}`"))
        })
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
