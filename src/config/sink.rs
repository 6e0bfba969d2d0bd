//! `[[agent.log_sinks]]` taken apart: the destination a sink's `url` names, its syslog
//! facility, and the checks `validate` runs on each sink (the agent's forwarder only
//! ever sees sinks that passed them).

use super::schema::LogSink;

/// How syslog messages travel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyslogTransport {
    /// One message per datagram (RFC 5426), cut to [`UDP_MAX`] bytes.
    Udp,
    /// Octet-counted frames on a TCP connection (RFC 6587 §3.4.1).
    Tcp,
    /// Octet-counted frames over TLS (RFC 5425).
    Tls,
}

/// The largest syslog datagram sent; longer messages are cut.
pub const UDP_MAX: usize = 8192;

/// Where a sink sends its lines.
#[derive(Clone, Debug, PartialEq)]
pub enum SinkTarget {
    Syslog {
        transport: SyslogTransport,
        host: String,
        port: u16,
    },
    Http {
        uri: http::Uri,
        tls: bool,
        host: String,
        port: u16,
    },
}

impl SinkTarget {
    /// Whether the connection is TLS (and so needs `ca_file`).
    pub fn tls(&self) -> bool {
        match self {
            SinkTarget::Syslog { transport, .. } => *transport == SyslogTransport::Tls,
            SinkTarget::Http { tls, .. } => *tls,
        }
    }

    pub fn host(&self) -> &str {
        match self {
            SinkTarget::Syslog { host, .. } | SinkTarget::Http { host, .. } => host,
        }
    }

    pub fn port(&self) -> u16 {
        match self {
            SinkTarget::Syslog { port, .. } | SinkTarget::Http { port, .. } => *port,
        }
    }
}

/// Parses a sink URL (see [`LogSink::url`]).
pub fn parse_target(url: &str) -> Result<SinkTarget, String> {
    let expected = "expected syslog+udp://HOST:PORT, syslog+tcp://HOST:PORT, \
                    syslog+tls://HOST:PORT, http://HOST[:PORT]/PATH or https://HOST[:PORT]/PATH";
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("`{url}` is not a URL ({e}): {expected}"))?;
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| format!("`{url}` has no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let transport = match uri.scheme_str() {
        Some("syslog+udp") => Some(SyslogTransport::Udp),
        Some("syslog+tcp") => Some(SyslogTransport::Tcp),
        Some("syslog+tls") => Some(SyslogTransport::Tls),
        Some("http" | "https") => None,
        _ => return Err(format!("`{url}`: {expected}")),
    };
    if let Some(transport) = transport {
        let Some(port) = uri.port_u16().filter(|p| *p != 0) else {
            return Err(format!(
                "`{url}` has no port (syslog is usually 514, over TLS 6514)"
            ));
        };
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(format!("`{url}`: a syslog URL has no path or query"));
        }
        return Ok(SinkTarget::Syslog {
            transport,
            host,
            port,
        });
    }
    let tls = uri.scheme_str() == Some("https");
    let port = match uri.port_u16() {
        Some(0) => return Err(format!("`{url}`: port 0")),
        Some(p) => p,
        None if tls => 443,
        None => 80,
    };
    Ok(SinkTarget::Http {
        uri,
        tls,
        host,
        port,
    })
}

/// The syslog facility's code (RFC 5424 §6.2.1).
pub fn facility_code(name: &str) -> Option<u8> {
    Some(match name {
        "kern" => 0,
        "user" => 1,
        "mail" => 2,
        "daemon" => 3,
        "auth" => 4,
        "syslog" => 5,
        "lpr" => 6,
        "news" => 7,
        "uucp" => 8,
        "cron" => 9,
        "authpriv" => 10,
        "ftp" => 11,
        _ => {
            let n: u8 = name.strip_prefix("local")?.parse().ok()?;
            if n > 7 || name.len() != 6 {
                return None;
            }
            16 + n
        }
    })
}

/// Every problem of one sink, as (key under `agent.log_sinks[i]`, message).
pub fn check(s: &LogSink) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let name_ok = (1..=63).contains(&s.name.len())
        && s.name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.name.starts_with('-');
    if !name_ok {
        out.push((
            "name",
            format!(
                "`{}` is not a sink name: 1-63 of a-z, 0-9 and -, not starting with -",
                s.name
            ),
        ));
    }
    match parse_target(&s.url) {
        Ok(t) => {
            if t.tls() && s.ca_file.is_none() {
                out.push((
                    "ca_file",
                    format!(
                        "`{}` is TLS: set ca_file to the PEM CA certificates that sign the sink's certificate",
                        s.url
                    ),
                ));
            }
            if !t.tls() && s.ca_file.is_some() {
                out.push((
                    "ca_file",
                    format!("`{}` is not TLS: ca_file is unused", s.url),
                ));
            }
            if matches!(t, SinkTarget::Syslog { .. }) && s.token_file.is_some() {
                out.push(("token_file", "only HTTP sinks send a token".into()));
            }
        }
        Err(e) => out.push(("url", e)),
    }
    for (key, file) in [("ca_file", &s.ca_file), ("token_file", &s.token_file)] {
        if let Some(p) = file {
            if let Err(e) = std::fs::File::open(p) {
                out.push((key, format!("cannot read {}: {e}", p.display())));
            }
        }
    }
    if facility_code(&s.facility).is_none() {
        out.push((
            "facility",
            format!(
                "`{}` is not a syslog facility: kern, user, mail, daemon, auth, syslog, lpr, news, uucp, cron, authpriv, ftp, local0-local7",
                s.facility
            ),
        ));
    }
    let sd_ok = s.sd_id.len() <= 32
        && s.sd_id.split_once('@').is_some_and(|(name, number)| {
            !name.is_empty()
                && !number.is_empty()
                && number.bytes().all(|b| b.is_ascii_digit() || b == b'.')
                && name
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && !matches!(b, b'=' | b']' | b'"' | b'@'))
        });
    if !sd_ok {
        out.push((
            "sd_id",
            format!(
                "`{}` is not a structured-data ID: NAME@ENTERPRISE-NUMBER, at most 32 characters",
                s.sd_id
            ),
        ));
    }
    if !(1..=10_000).contains(&s.batch) {
        out.push(("batch", format!("{} is out of range 1-10000", s.batch)));
    }
    for a in &s.apps {
        if a.is_empty() || a.len() > 63 {
            out.push(("apps", format!("`{a}` is not an app name")));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink(url: &str) -> LogSink {
        LogSink {
            name: "central".into(),
            url: url.into(),
            apps: vec![],
            ca_file: None,
            token_file: None,
            facility: "local0".into(),
            sd_id: "tessera@32473".into(),
            batch: 500,
        }
    }

    #[test]
    fn urls_name_the_transport() {
        assert_eq!(
            parse_target("syslog+tcp://10.0.0.5:514").unwrap(),
            SinkTarget::Syslog {
                transport: SyslogTransport::Tcp,
                host: "10.0.0.5".into(),
                port: 514
            }
        );
        assert!(matches!(
            parse_target("syslog+udp://logs.example:514").unwrap(),
            SinkTarget::Syslog { transport: SyslogTransport::Udp, ref host, port: 514 } if host == "logs.example"
        ));
        let t = parse_target("https://[::1]/ingest").unwrap();
        assert!(t.tls());
        assert_eq!((t.host(), t.port()), ("::1", 443));
        assert_eq!(parse_target("http://h:8080/x").unwrap().port(), 8080);
        for bad in [
            "syslog://h:514",
            "tcp://h:514",
            "syslog+tcp://h",
            "syslog+tcp://h:0",
            "syslog+tcp://h:514/path",
            "ftp://h/",
            "not a url",
            "http://:80/",
        ] {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn facilities() {
        assert_eq!(facility_code("user"), Some(1));
        assert_eq!(facility_code("local0"), Some(16));
        assert_eq!(facility_code("local7"), Some(23));
        for bad in ["local8", "local", "local01", "LOCAL0", ""] {
            assert_eq!(facility_code(bad), None, "{bad}");
        }
    }

    #[test]
    fn checks_name_every_bad_field() {
        assert!(check(&sink("syslog+tcp://127.0.0.1:514")).is_empty());
        let keys = |s: &LogSink| check(s).into_iter().map(|(k, _)| k).collect::<Vec<_>>();
        assert_eq!(keys(&sink("syslog+tls://127.0.0.1:6514")), ["ca_file"]);
        assert_eq!(keys(&sink("https://logs/ingest")), ["ca_file"]);
        let mut s = sink("syslog+udp://127.0.0.1:514");
        s.name = "Bad Name".into();
        s.facility = "local9".into();
        s.sd_id = "no-at-sign".into();
        s.batch = 0;
        s.token_file = Some("/nonexistent/token".into());
        assert_eq!(
            keys(&s),
            [
                "name",
                "token_file",
                "token_file",
                "facility",
                "sd_id",
                "batch"
            ]
        );
    }
}
