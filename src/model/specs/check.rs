//! What `check_spec` checks of a spec on its own: types, ranges, required fields.
//! References to other objects are checked against the world in `world.rs`.

use super::*;

fn check_endpoint(field: &str, s: &str) -> Result<(), Invalid> {
    let ok = s.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty()
            && !host.contains(char::is_whitespace)
            && port.parse::<u16>().is_ok_and(|p| p > 0)
    });
    if ok {
        Ok(())
    } else {
        Err(Invalid::new(field, format!("`{s}` is not host:port")))
    }
}

/// Checks a spec on its own (types, ranges, required fields); references to other
/// objects are checked against the world in `world.rs`.
pub fn check_spec(kind: Kind, spec: &serde_json::Value) -> Result<(), Invalid> {
    if !(spec.is_object() || spec.is_null()) {
        return Err(Invalid::new("spec", "must be an object"));
    }
    match kind {
        Kind::Region => {
            parse::<RegionSpec>(spec)?;
        }
        Kind::Zone => {
            let s: ZoneSpec = parse(spec)?;
            name_ref("spec.region", &s.region)?;
        }
        Kind::Unit => {
            let s: UnitSpec = parse(spec)?;
            name_ref("spec.zone", &s.zone)?;
            if let Some(z) = &s.standby_zone {
                name_ref("spec.standbyZone", z)?;
                if *z == s.zone {
                    return Err(Invalid::new(
                        "spec.standbyZone",
                        format!("the standby zone must differ from the zone (`{z}`)"),
                    ));
                }
            }
            match s.unit_type {
                UnitType::RZone => {
                    if s.slots.is_empty() {
                        return Err(Invalid::new(
                            "spec.slots",
                            "an RZone owns at least one slot (e.g. [\"00-49\"])",
                        ));
                    }
                    let mut seen = [false; 100];
                    for (i, r) in s.slots.iter().enumerate() {
                        for slot in parse_slots(&format!("spec.slots[{i}]"), r)? {
                            if std::mem::replace(&mut seen[slot as usize], true) {
                                return Err(Invalid::new(
                                    format!("spec.slots[{i}]"),
                                    format!("slot {slot:02} is listed twice"),
                                ));
                            }
                        }
                    }
                }
                _ if !s.slots.is_empty() => {
                    return Err(Invalid::new("spec.slots", "only an RZone owns slots"))
                }
                _ => {}
            }
        }
        Kind::ShardMap => {
            let s: ShardMapSpec = parse(spec)?;
            let mut owner: [Option<&str>; 100] = [None; 100];
            for (range, unit) in &s.slots {
                let field = format!("spec.slots.{range}");
                name_ref(&field, unit)?;
                for slot in parse_slots(&field, range)? {
                    if let Some(prev) = owner[slot as usize].replace(unit) {
                        return Err(Invalid::new(
                            field,
                            format!("slot {slot:02} is mapped twice (to `{prev}` and `{unit}`)"),
                        ));
                    }
                }
            }
            let missing: Vec<String> = (0..100u8)
                .filter(|s| owner[*s as usize].is_none())
                .map(|s| format!("{s:02}"))
                .collect();
            if !missing.is_empty() {
                return Err(Invalid::new(
                    "spec.slots",
                    format!(
                        "every slot 00-99 must be mapped; missing: {}",
                        compress(&missing)
                    ),
                ));
            }
        }
        Kind::Cluster => {
            let s: ClusterSpec = parse(spec)?;
            name_ref("spec.zone", &s.zone)?;
            if let Some(url) = &s.api_server {
                if !(url.starts_with("https://") || url.starts_with("http://")) {
                    return Err(Invalid::new(
                        "spec.apiServer",
                        format!("`{url}` is not an http(s) URL"),
                    ));
                }
            }
        }
        Kind::Node => {
            let s: NodeSpec = parse(spec)?;
            if let Some(z) = &s.zone {
                name_ref("spec.zone", z)?;
            }
            if let Some(c) = &s.cluster {
                name_ref("spec.cluster", c)?;
            }
            if let Some(a) = &s.address {
                if a.parse::<std::net::IpAddr>().is_err() {
                    return Err(Invalid::new(
                        "spec.address",
                        format!("`{a}` is not an IP address"),
                    ));
                }
            }
        }
        Kind::App => {
            let s: AppSpec = parse(spec)?;
            match s.mode {
                // A command alone runs what is already installed on the machines.
                AppMode::Vm
                    if s.artifact.as_deref().is_none_or(str::is_empty) && s.command.is_empty() =>
                {
                    return Err(Invalid::new(
                        "spec.artifact",
                        "a VM-mode app names the artifact it runs, or a command already installed on its machines",
                    ))
                }
                AppMode::Container if s.image.as_deref().is_none_or(str::is_empty) => {
                    return Err(Invalid::new(
                        "spec.image",
                        "a container-mode app names its image",
                    ))
                }
                _ => {}
            }
            if s.port == 0 && s.mode != AppMode::External {
                return Err(Invalid::new("spec.port", "must be 1-65535"));
            }
            if s.mode == AppMode::External && s.endpoints.is_empty() {
                return Err(Invalid::new(
                    "spec.endpoints",
                    "an external app is reached only through its endpoints: name at least one",
                ));
            }
            for (i, e) in s.endpoints.iter().enumerate() {
                if e.address.parse::<std::net::SocketAddr>().is_err() {
                    return Err(Invalid::new(
                        format!("spec.endpoints[{i}].address"),
                        format!("`{}` is not IP:PORT", e.address),
                    ));
                }
                if let Some(u) = &e.unit {
                    name_ref(&format!("spec.endpoints[{i}].unit"), u)?;
                }
                if let Some(z) = &e.zone {
                    name_ref(&format!("spec.endpoints[{i}].zone"), z)?;
                }
            }
            if s.replicas_per_unit == 0 || s.replicas_per_unit > 1000 {
                return Err(Invalid::new("spec.replicasPerUnit", "must be 1-1000"));
            }
            for (i, u) in s.units.iter().enumerate() {
                name_ref(&format!("spec.units[{i}]"), u)?;
            }
            if let Some(h) = &s.health_check {
                if !h.path.starts_with('/') {
                    return Err(Invalid::new("spec.healthCheck.path", "must start with /"));
                }
                if h.interval_secs == 0 || h.timeout_secs == 0 || h.timeout_secs > h.interval_secs {
                    return Err(Invalid::new(
                        "spec.healthCheck",
                        "intervalSecs and timeoutSecs must be positive, timeoutSecs at most intervalSecs",
                    ));
                }
            }
            for k in s.env.keys() {
                let ok = !k.is_empty()
                    && !k.starts_with(|c: char| c.is_ascii_digit())
                    && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                if !ok {
                    return Err(Invalid::new(
                        format!("spec.env.{k}"),
                        "environment names are letters, digits and '_', not starting with a digit",
                    ));
                }
            }
            if let Some(d) = &s.log_dir {
                if !d.starts_with('/') {
                    return Err(Invalid::new("spec.logDir", "must be an absolute path"));
                }
            }
            if let Some(r) = &s.resources {
                let ranges: [(&str, Option<u64>, u64, u64); 4] = [
                    ("memoryMb", r.memory_mb, 16, 16 << 20),
                    ("cpuMillis", r.cpu_millis.map(u64::from), 10, 1_000_000),
                    ("openFiles", r.open_files, 16, 1 << 20),
                    ("pids", r.pids, 1, 1 << 22),
                ];
                for (field, value, lo, hi) in ranges {
                    if let Some(v) = value {
                        if !(lo..=hi).contains(&v) {
                            return Err(Invalid::new(
                                format!("spec.resources.{field}"),
                                format!("{v} is out of range {lo}-{hi}"),
                            ));
                        }
                    }
                }
            }
        }
        Kind::Instance => {
            let s: InstanceSpec = parse(spec)?;
            name_ref("spec.app", &s.app)?;
            name_ref("spec.unit", &s.unit)?;
        }
        Kind::Artifact => {
            let s: ArtifactSpec = parse(spec)?;
            if let Some(a) = &s.app {
                name_ref("spec.app", a)?;
            }
            if s.version.is_empty() {
                return Err(Invalid::new("spec.version", "must not be empty"));
            }
            if let Some(h) = &s.sha256 {
                if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(Invalid::new("spec.sha256", "64 hex digits"));
                }
            }
        }
        Kind::Release => {
            let s: ReleaseSpec = parse(spec)?;
            name_ref("spec.app", &s.app)?;
            if s.version.is_empty() {
                return Err(Invalid::new("spec.version", "must not be empty"));
            }
            if s.canary_weight.is_some_and(|w| w > 100) {
                return Err(Invalid::new("spec.canaryWeight", "0-100"));
            }
            if s.approvals > 10 {
                return Err(Invalid::new("spec.approvals", "0-10"));
            }
            for (i, b) in s.batches.iter().enumerate() {
                if b.is_empty() {
                    return Err(Invalid::new(format!("spec.batches[{i}]"), "an empty batch"));
                }
                for (j, u) in b.iter().enumerate() {
                    name_ref(&format!("spec.batches[{i}][{j}]"), u)?;
                }
            }
        }
        Kind::TrafficRule => {
            let s: TrafficRuleSpec = parse(spec)?;
            name_ref("spec.app", &s.app)?;
            check_traffic_rule(&s)?;
        }
        Kind::Certificate => {
            let s: crate::model::certificate::CertificateSpec = parse(spec)?;
            crate::model::certificate::check(&s, crate::model::SEALED_PREFIX)?;
        }
        Kind::DataSource => {
            let s: DataSourceSpec = parse(spec)?;
            if s.database.is_empty()
                || s.database.len() > 64
                || !s
                    .database
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$')
            {
                return Err(Invalid::new(
                    "spec.database",
                    "1-64 characters of letters, digits, '_' and '$'",
                ));
            }
            if s.shards.is_empty() {
                return Err(Invalid::new("spec.shards", "at least one shard"));
            }
            let ident = |field: String, v: &str| {
                if v.is_empty()
                    || v.len() > 64
                    || !v
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$')
                {
                    Err(Invalid::new(
                        field,
                        format!("`{v}`: 1-64 characters of letters, digits, '_' and '$'"),
                    ))
                } else {
                    Ok(())
                }
            };
            if let Some(k) = &s.shard_key {
                ident("spec.shardKey".into(), k)?;
            }
            let mut tables = std::collections::BTreeSet::new();
            for (i, t) in s.tables.iter().enumerate() {
                ident(format!("spec.tables[{i}].name"), &t.name)?;
                if !tables.insert(t.name.to_ascii_lowercase()) {
                    return Err(Invalid::new(
                        format!("spec.tables[{i}].name"),
                        format!("table `{}` is listed twice", t.name),
                    ));
                }
                if let Some(k) = &t.shard_key {
                    ident(format!("spec.tables[{i}].shardKey"), k)?;
                    if t.table_type != TableType::Sharded {
                        return Err(Invalid::new(
                            format!("spec.tables[{i}].shardKey"),
                            "only a sharded table has a shard key",
                        ));
                    }
                }
            }
            let mut names = std::collections::BTreeSet::new();
            for (i, u) in s.proxy_users.iter().enumerate() {
                if u.name.is_empty() || u.name.len() > 80 || u.name.contains(['\0', '\'', '`']) {
                    return Err(Invalid::new(
                        format!("spec.proxyUsers[{i}].name"),
                        "1-80 characters without NUL, quotes or backticks",
                    ));
                }
                if !names.insert(&u.name) {
                    return Err(Invalid::new(
                        format!("spec.proxyUsers[{i}].name"),
                        format!("user `{}` is listed twice", u.name),
                    ));
                }
            }
            let mut units = std::collections::BTreeSet::new();
            for (i, sh) in s.shards.iter().enumerate() {
                name_ref(&format!("spec.shards[{i}].unit"), &sh.unit)?;
                if !units.insert(&sh.unit) {
                    return Err(Invalid::new(
                        format!("spec.shards[{i}].unit"),
                        format!("unit `{}` has two shards", sh.unit),
                    ));
                }
                check_endpoint(&format!("spec.shards[{i}].primary"), &sh.primary)?;
                for (j, r) in sh.replicas.iter().enumerate() {
                    check_endpoint(&format!("spec.shards[{i}].replicas[{j}]"), r)?;
                }
            }
            check_backend_tls(&s.tls)?;
        }
        Kind::User => {
            let s: UserSpec = parse(spec)?;
            if !ROLES.contains(&s.role.as_str()) {
                return Err(Invalid::new(
                    "spec.role",
                    format!("`{}`: expected one of {}", s.role, ROLES.join(", ")),
                ));
            }
        }
        Kind::Event | Kind::AuditEvent => {}
    }
    Ok(())
}

fn check_backend_tls(tls: &BackendTls) -> Result<(), Invalid> {
    let verify = matches!(
        tls.mode,
        BackendTlsMode::VerifyCa | BackendTlsMode::VerifyIdentity
    );
    match &tls.ca {
        None if verify => Err(Invalid::new(
            "spec.tls.ca",
            "verifyCa and verifyIdentity need the PEM CA certificates the servers' certificates chain to",
        )),
        Some(ca) => crate::pki::roots_from_pem(ca)
            .map(|_| ())
            .map_err(|e| Invalid::new("spec.tls.ca", e)),
        None => Ok(()),
    }
}

/// "00, 01, 02, 05" as "00-02, 05".
pub(super) fn compress(slots: &[String]) -> String {
    let nums: Vec<u8> = slots.iter().filter_map(|s| s.parse().ok()).collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < nums.len() {
        let mut j = i;
        while j + 1 < nums.len() && nums[j + 1] == nums[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            format!("{:02}", nums[i])
        } else {
            format!("{:02}-{:02}", nums[i], nums[j])
        });
        i = j + 1;
    }
    out.join(", ")
}

fn check_traffic_rule(s: &TrafficRuleSpec) -> Result<(), Invalid> {
    name_ref("spec.app", &s.app)?;
    if let Some(h) = &s.host {
        let bare = h.strip_prefix("*.").unwrap_or(h);
        let ok = !bare.is_empty()
            && bare.len() <= 253
            && bare.split('.').all(|l| {
                !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !ok {
            return Err(Invalid::new(
                "spec.host",
                format!("`{h}` is not a host name or a `*.domain` wildcard"),
            ));
        }
    }
    if !s.path_prefix.starts_with('/') {
        return Err(Invalid::new("spec.pathPrefix", "must start with /"));
    }
    if s.path.as_deref().is_some_and(|p| !p.starts_with('/')) {
        return Err(Invalid::new("spec.path", "must start with /"));
    }
    for (i, m) in s.methods.iter().enumerate() {
        if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(Invalid::new(
                format!("spec.methods[{i}]"),
                format!("`{m}` is not a method (upper case, e.g. GET)"),
            ));
        }
    }
    for k in s.headers.keys() {
        if http_token(k).is_none() {
            return Err(Invalid::new(
                format!("spec.headers.{k}"),
                "not a header name",
            ));
        }
    }
    if s.routing_key.source != KeySource::PathSegment && http_token(&s.routing_key.name).is_none() {
        return Err(Invalid::new(
            "spec.routingKey.name",
            "must be a header, cookie or query parameter name",
        ));
    }
    if !ROUTE_BY.contains(&s.route_by.as_str()) {
        return Err(Invalid::new(
            "spec.routeBy",
            format!("`{}`: expected one of {}", s.route_by, ROUTE_BY.join(", ")),
        ));
    }
    for z in s.zone_weights.keys() {
        name_ref(&format!("spec.zoneWeights.{z}"), z)?;
    }
    if let Some(c) = &s.canary {
        if c.weight > 100 {
            return Err(Invalid::new("spec.canary.weight", "0-100"));
        }
        if c.version.is_empty() {
            return Err(Invalid::new("spec.canary.version", "must not be empty"));
        }
        for (f, v) in [("header", &c.header), ("cookie", &c.cookie)] {
            if let Some(v) = v {
                let name = v.split_once('=').map_or(v.as_str(), |(n, _)| n);
                if http_token(name).is_none() {
                    return Err(Invalid::new(
                        format!("spec.canary.{f}"),
                        format!("`{v}`: expected NAME or NAME=VALUE"),
                    ));
                }
            }
        }
    }
    if let Some(m) = &s.mirror {
        if m.percent == 0 || m.percent > 100 {
            return Err(Invalid::new("spec.mirror.percent", "1-100"));
        }
        if let Some(a) = &m.app {
            name_ref("spec.mirror.app", a)?;
        }
    }
    if s.timeout_ms == 0 || s.timeout_ms > 3_600_000 {
        return Err(Invalid::new("spec.timeoutMs", "1-3600000"));
    }
    if s.retries > 5 {
        return Err(Invalid::new("spec.retries", "0-5"));
    }
    Ok(())
}

/// `s` if it is an HTTP token (a header name), lower-cased.
fn http_token(s: &str) -> Option<String> {
    let ok = !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    ok.then(|| s.to_ascii_lowercase())
}
