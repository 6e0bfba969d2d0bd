//! `tessera logs APP`: an app's collected log lines from every node it runs on, through
//! the control plane (`GET /api/v1/logs`, NDJSON).

use super::args::LogsArgs;
use super::client_cmd::block_on;
use super::EXIT_BAD_INPUT;
use crate::api::logs::{Line, Query};
use crate::api::ClientError;
use http_body_util::BodyExt;
use std::process::ExitCode;

pub fn logs(a: LogsArgs) -> ExitCode {
    let since = match a.since.as_deref().map(since_ms) {
        None => None,
        Some(Ok(ms)) => Some(ms.to_string()),
        Some(Err(e)) => {
            eprintln!("error: --since: {e}");
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    let q = Query {
        app: a.app.clone(),
        unit: a.unit.clone(),
        instance: a.instance.clone(),
        since,
        grep: a.grep.clone(),
        limit: a.limit,
        follow: a.follow,
    };
    if let Err((field, message)) = q.check() {
        eprintln!("error: {field}: {message}");
        return ExitCode::from(EXIT_BAD_INPUT);
    }
    let json = a.output == "json";
    block_on(
        |c| async move {
            let mut body = c
                .stream(&format!("/api/v1/logs?{}", q.to_query_string()))
                .await?;
            let (mut partial, mut records, mut problems) = (Vec::new(), 0usize, 0usize);
            while let Some(frame) = body.frame().await {
                let frame =
                    frame.map_err(|e| ClientError::Local(format!("reading the answer: {e}")))?;
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                partial.extend_from_slice(&data);
                while let Some(i) = partial.iter().position(|b| *b == b'\n') {
                    let raw: Vec<u8> = partial.drain(..=i).collect();
                    match serde_json::from_slice::<Line>(&raw) {
                        Ok(Line::Record(r)) => {
                            records += 1;
                            if json {
                                print!("{}", String::from_utf8_lossy(&raw));
                            } else {
                                println!(
                                    "{} {} {} {} | {}",
                                    crate::util::rfc3339_ms(r.t),
                                    r.node,
                                    r.instance.as_deref().unwrap_or(&r.app),
                                    r.file,
                                    r.line
                                );
                            }
                        }
                        Ok(Line::Problem { node, error }) => {
                            problems += 1;
                            eprintln!("warning: node {node}: {error}");
                        }
                        Err(_) => {}
                    }
                }
            }
            if records == 0 && problems > 0 {
                return Err(ClientError::Local(
                    "no node could be read (see the warnings)".into(),
                ));
            }
            Ok(())
        },
        &a.client,
    )
}

/// `--since`: a duration back from now (`90s`, `15m`, `2h`, `1d`) or an RFC 3339 time.
fn since_ms(s: &str) -> Result<u64, String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let unit = |c: char| match c {
        's' => Some(1_000u64),
        'm' => Some(60_000),
        'h' => Some(3_600_000),
        'd' => Some(86_400_000),
        _ => None,
    };
    if let Some(last) = s.chars().last() {
        if let (Some(mul), Ok(n)) = (unit(last), s[..s.len() - 1].parse::<u64>()) {
            return Ok(now.saturating_sub(n.saturating_mul(mul)));
        }
    }
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .ok()
        .and_then(|t| u64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok())
        .ok_or_else(|| {
            format!("`{s}` is neither a duration (90s, 15m, 2h, 1d) nor an RFC 3339 time")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_durations_and_times() {
        let now = since_ms("0s").unwrap();
        assert!(now - since_ms("15m").unwrap() >= 900_000);
        assert_eq!(since_ms("2026-11-30T08:00:00Z").unwrap(), 1_796_025_600_000);
        assert!(since_ms("soon").is_err());
        assert!(since_ms("15x").is_err());
        assert_eq!(
            crate::util::rfc3339_ms(1_796_025_600_123),
            "2026-11-30T08:00:00.123Z"
        );
    }
}
