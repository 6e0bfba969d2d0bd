//! `apply`, `get`, `delete`, `user` and `audit`: the resource API from the command line.

use super::args::{
    ApplyArgs, AuditCommand, AuditListArgs, ClientArgs, DeleteArgs, GetArgs, UserCommand,
};
use super::client_cmd::block_on;
use super::EXIT_BAD_INPUT;
use crate::api::{Client, ClientError};
use crate::model::audit::{verify, AuditEvent, GENESIS};
use crate::model::{Kind, Resource};
use serde_json::Value;
use std::io::Read;
use std::process::ExitCode;

fn bad_input(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::from(EXIT_BAD_INPUT)
}

fn kind(s: &str) -> Result<Kind, ExitCode> {
    Kind::parse(s).ok_or_else(|| {
        bad_input(format!(
            "`{s}` is not a kind; kinds are {}",
            Kind::ALL.map(|k| k.plural()).join(", ")
        ))
    })
}

pub fn apply(a: ApplyArgs) -> ExitCode {
    let text = if a.file.as_os_str() == "-" {
        let mut s = String::new();
        if let Err(e) = std::io::stdin().read_to_string(&mut s) {
            return bad_input(format!("reading stdin: {e}"));
        }
        s
    } else {
        match std::fs::read_to_string(&a.file) {
            Ok(s) => s,
            Err(e) => return bad_input(format!("{}: {e}", a.file.display())),
        }
    };
    let docs = match crate::model::parse_documents(&text) {
        Ok(d) => d,
        Err(e) => return bad_input(format!("{}: {e}", a.file.display())),
    };
    if docs.is_empty() {
        return bad_input(format!("{}: no documents", a.file.display()));
    }
    // Checked here too, so a typo is reported before anything is sent.
    for (i, d) in docs.iter().enumerate() {
        if let Err(e) = d.check(None) {
            return bad_input(format!(
                "{}: document {} ({} {}): {e}",
                a.file.display(),
                i + 1,
                d.kind,
                d.metadata.name
            ));
        }
    }
    block_on(
        |c| async move {
            let r = c.apply(&docs).await?;
            for o in &r.results {
                println!("{}/{} {}", o.kind.to_ascii_lowercase(), o.name, o.action);
            }
            eprintln!("{} changed, revision {}", r.changed, r.revision);
            Ok(())
        },
        &a.client,
    )
}

pub fn get(a: GetArgs) -> ExitCode {
    let k = match kind(&a.kind) {
        Ok(k) => k,
        Err(code) => return code,
    };
    let (output, name, selector) = (a.output.clone(), a.name.clone(), a.selector.clone());
    if k == Kind::AuditEvent {
        return block_on(
            |c| async move {
                let events = all_audit_events(&c).await?;
                let events: Vec<&AuditEvent> = events
                    .iter()
                    .filter(|e| name.as_ref().is_none_or(|n| e.seq.to_string() == *n))
                    .collect();
                print_audit(&events, &output)
            },
            &a.client,
        );
    }
    block_on(
        |c| async move {
            match name {
                Some(n) => {
                    let r = c.get(k, &n).await?;
                    print_resources(k, &[r], &output, true)
                }
                None => {
                    let l = c.list(k, selector.as_deref()).await?;
                    print_resources(k, &l.items, &output, false)
                }
            }
        },
        &a.client,
    )
}

pub fn delete(a: DeleteArgs) -> ExitCode {
    let k = match kind(&a.kind) {
        Ok(k) => k,
        Err(code) => return code,
    };
    let name = a.name.clone();
    block_on(
        |c| async move {
            c.delete(k, &name).await?;
            println!("{}/{name} deleted", k.singular().to_ascii_lowercase());
            Ok(())
        },
        &a.client,
    )
}

/// `tessera failover UNIT --to ZONE`: the unit's zone becomes ZONE; when ZONE was its
/// standby zone, the old zone becomes the standby (a failback is the same command).
/// Written with the unit's revision as read, so a concurrent change is not overwritten.
pub fn failover(a: super::args::FailoverArgs) -> ExitCode {
    let (unit, to) = (a.unit.clone(), a.to.clone());
    block_on(
        |c| async move {
            let mut u = c.get(Kind::Unit, &unit).await?;
            let from = u.spec["zone"].as_str().unwrap_or_default().to_string();
            if from == to {
                println!("unit {unit} is already in zone {to}");
                return Ok(());
            }
            let standby = u.spec["standbyZone"].as_str().map(str::to_string);
            u.spec["zone"] = serde_json::json!(to);
            if standby.as_deref() == Some(to.as_str()) {
                u.spec["standbyZone"] = serde_json::json!(from);
            }
            let after = c.put(Kind::Unit, &u).await?;
            println!(
                "unit {unit}: zone {from} -> {to}{} (revision {})",
                after.spec["standbyZone"]
                    .as_str()
                    .map(|s| format!(", standby {s}"))
                    .unwrap_or_default(),
                after.metadata.revision.unwrap_or(0)
            );
            Ok(())
        },
        &a.client,
    )
}

pub fn user(cmd: UserCommand) -> ExitCode {
    match cmd {
        UserCommand::Create { name, role, client } => block_on(
            |c| async move {
                let t = c.create_user(&name, &role).await?;
                println!("{}", t.token);
                eprintln!(
                    "user {} ({}) created; the token is shown only this once",
                    t.name, t.role
                );
                Ok(())
            },
            &client,
        ),
        UserCommand::Token { name, client } => block_on(
            |c| async move {
                let t = c.new_user_token(&name).await?;
                println!("{}", t.token);
                eprintln!(
                    "new token for {} ({}); shown only this once",
                    t.name, t.role
                );
                Ok(())
            },
            &client,
        ),
        UserCommand::List { client } => block_on(
            |c| async move {
                let l = c.list(Kind::User, None).await?;
                print_resources(Kind::User, &l.items, "table", false)
            },
            &client,
        ),
        UserCommand::Delete { name, client } => delete(DeleteArgs {
            kind: "users".into(),
            name,
            client,
        }),
    }
}

pub fn audit(cmd: AuditCommand) -> ExitCode {
    match cmd {
        AuditCommand::Verify { client } => verify_chain(&client),
        AuditCommand::List(a) => audit_list(a),
    }
}

fn audit_list(a: AuditListArgs) -> ExitCode {
    let mut filters: Vec<(&'static str, String)> = Vec::new();
    for (k, v) in [
        ("kind", &a.kind),
        ("name", &a.name),
        ("user", &a.user),
        ("since", &a.since),
        ("until", &a.until),
    ] {
        if let Some(v) = v {
            filters.push((k, v.clone()));
        }
    }
    let output = a.output.clone();
    block_on(
        |c| async move {
            let f: Vec<(&str, &str)> = filters.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let mut events = Vec::new();
            let mut after = 0;
            for _ in 0..100_000 {
                let page = c.audit_page(after, 1000, &f).await?;
                let done = !page.more || page.next == after;
                after = page.next;
                events.extend(page.items);
                if done {
                    break;
                }
            }
            let refs: Vec<&AuditEvent> = events.iter().collect();
            print_audit(&refs, &output)
        },
        &a.client,
    )
}

async fn all_audit_events(c: &Client) -> Result<Vec<AuditEvent>, ClientError> {
    let mut out = Vec::new();
    let mut after = 0;
    // Bounded: 100000 pages of 1000 events.
    for _ in 0..100_000 {
        let page = c.audit_page(after, 1000, &[]).await?;
        let done = !page.more || page.next == after;
        after = page.next;
        out.extend(page.items);
        if done {
            break;
        }
    }
    Ok(out)
}

fn verify_chain(client: &ClientArgs) -> ExitCode {
    block_on(
        |c| async move {
            let events = all_audit_events(&c).await?;
            match verify(&events, (0, GENESIS)) {
                Ok((seq, hash)) => {
                    println!("audit chain intact: {seq} events, head {hash}");
                    Ok(())
                }
                Err(b) => Err(ClientError::Local(format!(
                    "audit chain broken at event {}: {}",
                    b.seq, b.reason
                ))),
            }
        },
        client,
    )
}

fn print_audit(events: &[&AuditEvent], output: &str) -> Result<(), ClientError> {
    match output {
        "json" => println!(
            "{}",
            serde_json::to_string_pretty(events).unwrap_or_default()
        ),
        "yaml" => print!("{}", yaml_serde::to_string(events).unwrap_or_default()),
        _ => {
            println!(
                "{:>6}  {:<20}  {:<12} {:<12} {:<12} {:<16} {:<8}  REASON",
                "SEQ", "TIME", "USER", "ACTION", "KIND", "NAME", "OUTCOME"
            );
            for e in events {
                println!(
                    "{:>6}  {:<20}  {:<12} {:<12} {:<12} {:<16} {:<8}  {}",
                    e.seq,
                    e.time,
                    e.user,
                    e.action,
                    e.kind,
                    e.name,
                    e.outcome,
                    e.reason.as_deref().unwrap_or("")
                );
            }
        }
    }
    Ok(())
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(s).collect::<Vec<_>>().join(","),
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| format!("{k}:{}", s(v)))
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    }
}

/// A data source's shards with their health as the DB proxies report it
/// (`rz00=ok,rz01=down`): `down` when a proxy cannot reach the primary, `degraded` when
/// a replica is down or too far behind, `?` when no proxy has reported.
fn shard_health(shards: &Value, status: &Value) -> String {
    let reports: Vec<&Value> = status
        .get("proxies")
        .and_then(Value::as_object)
        .map(|m| m.values().collect())
        .unwrap_or_default();
    let units: Vec<&str> = shards
        .as_array()
        .map(|a| a.iter().filter_map(|s| s.get("unit")?.as_str()).collect())
        .unwrap_or_default();
    units
        .iter()
        .map(|u| {
            let seen: Vec<&Value> = reports
                .iter()
                .filter_map(|r| r.get("shards")?.get(*u))
                .collect();
            let state = if seen.is_empty() {
                "?"
            } else if seen.iter().any(|s| s["primary"]["up"] == false) {
                "down"
            } else if seen.iter().any(|s| {
                s["replicas"]
                    .as_array()
                    .is_some_and(|rs| rs.iter().any(|r| r["up"] == false || r["lagging"] == true))
            }) {
                "degraded"
            } else {
                "ok"
            };
            format!("{u}={state}")
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Kind-specific table columns: (header, spec field).
fn columns(k: Kind) -> &'static [(&'static str, &'static str)] {
    match k {
        Kind::Zone => &[("REGION", "region")],
        Kind::Unit => &[
            ("TYPE", "type"),
            ("ZONE", "zone"),
            ("STANDBY", "standbyZone"),
            ("SLOTS", "slots"),
        ],
        Kind::ShardMap => &[("SLOTS", "slots")],
        Kind::Cluster => &[("TYPE", "type"), ("ZONE", "zone")],
        Kind::Node => &[("ZONE", "zone"), ("ADDRESS", "address")],
        Kind::App => &[
            ("MODE", "mode"),
            ("PORT", "port"),
            ("ARTIFACT", "artifact"),
            ("IMAGE", "image"),
        ],
        Kind::Instance => &[("APP", "app"), ("UNIT", "unit"), ("NODE", "node")],
        Kind::Artifact => &[("VERSION", "version")],
        Kind::Release => &[
            ("APP", "app"),
            ("VERSION", "version"),
            ("STRATEGY", "strategy"),
        ],
        Kind::TrafficRule => &[
            ("HOST", "host"),
            ("PATH", "pathPrefix"),
            ("APP", "app"),
            ("BY", "routeBy"),
        ],
        Kind::DataSource => &[("DATABASE", "database"), ("SHARDS", "shards")],
        Kind::Certificate => &[("HOSTS", "hosts")],
        Kind::User => &[("ROLE", "role")],
        _ => &[],
    }
}

fn print_resources(
    k: Kind,
    items: &[Resource],
    output: &str,
    single: bool,
) -> Result<(), ClientError> {
    match output {
        "json" => {
            let v = if single {
                serde_json::to_value(&items[0])
            } else {
                serde_json::to_value(items)
            }
            .unwrap_or_default();
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        }
        "yaml" => {
            for (i, r) in items.iter().enumerate() {
                if i > 0 {
                    println!("---");
                }
                print!("{}", yaml_serde::to_string(r).unwrap_or_default());
            }
        }
        _ => {
            let cols = columns(k);
            let mut rows: Vec<Vec<String>> = vec![std::iter::once("NAME".to_string())
                .chain(cols.iter().map(|(h, _)| h.to_string()))
                .chain(["REVISION".to_string(), "CREATED".to_string()])
                .collect()];
            for r in items {
                let mut row = vec![r.metadata.name.clone()];
                for (_, field) in cols {
                    let v = r.spec.get(*field).unwrap_or(&Value::Null);
                    row.push(match (k, *field) {
                        (Kind::DataSource, "shards") => shard_health(v, &r.status),
                        _ => s(v),
                    });
                }
                row.push(
                    r.metadata
                        .revision
                        .map(|v| v.to_string())
                        .unwrap_or("-".into()),
                );
                row.push(r.metadata.created_at.clone().unwrap_or("-".into()));
                rows.push(row);
            }
            let widths: Vec<usize> = (0..rows[0].len())
                .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
                .collect();
            for row in rows {
                let line: Vec<String> = row
                    .iter()
                    .zip(&widths)
                    .map(|(c, w)| format!("{c:<w$}"))
                    .collect();
                println!("{}", line.join("  ").trim_end());
            }
            if items.is_empty() {
                eprintln!("no {} found", k.plural());
            }
        }
    }
    Ok(())
}
