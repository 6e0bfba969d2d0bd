//! The agent's node: registration, the heartbeat (machine facts, the agent's address,
//! pressure conditions) and node events.

use super::*;

fn machine_facts() -> Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let mem_kb: u64 = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let os = read("/etc/os-release")
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_default();
    json!({
        "hostname": read("/proc/sys/kernel/hostname").trim(),
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
        "os": os,
        "cpus": cpus,
        "memoryMb": mem_kb / 1024,
        "agentVersion": crate::telemetry::VERSION,
    })
}

impl Supervisor {
    /// Queues a node event: `kind` Normal or Warning, a CamelCase `reason`.
    pub(super) fn event(
        &mut self,
        kind: &str,
        reason: &str,
        instance: Option<&str>,
        message: String,
    ) {
        push_event(
            &mut self.events,
            &mut self.event_seq,
            &self.node,
            kind,
            reason,
            instance,
            message,
        );
    }

    /// Records the queued events; kept for the next pass while the API is away.
    pub(super) async fn flush_events(&mut self, client: &Client) {
        while let Some(ev) = self.events.first() {
            let path = format!(
                "/api/v1/events/{}",
                ev["metadata"]["name"].as_str().unwrap_or("x")
            );
            match client.call::<Value>(Method::PUT, &path, Some(ev)).await {
                Ok(_) => {
                    self.events.remove(0);
                }
                Err(e) if e.is_bad_input() || e.status() == Some(403) => {
                    tracing::warn!(error = %e, "An event was refused; dropping it");
                    self.events.remove(0);
                }
                Err(_) => break,
            }
        }
    }

    pub(super) async fn register(&self, client: &Client) {
        let path = format!("/api/v1/nodes/{}", self.node);
        match client.send(Method::GET, &path, None).await {
            Ok((s, _)) if s == http::StatusCode::NOT_FOUND => {
                let facts = machine_facts();
                let mut spec = json!({
                    "address": self.ip.to_string(),
                    "capacity": {
                        "cpuMillis": facts["cpus"].as_u64().unwrap_or(1) * 1000,
                        "memoryMb": facts["memoryMb"],
                    },
                });
                if let Some(z) = &self.zone {
                    spec["zone"] = json!(z);
                }
                let body = json!({"apiVersion": crate::model::API_VERSION, "kind": "Node", "metadata": {"name": self.node}, "spec": spec});
                match client.call::<Value>(Method::PUT, &path, Some(&body)).await {
                    Ok(_) => tracing::info!(node = %self.node, "Registered this machine as a node"),
                    Err(e) => tracing::warn!(error = %e, "Registering the node failed"),
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "Reading this node failed"),
        }
    }

    pub(super) async fn heartbeat(&mut self, client: &Client) {
        let api = self.agent_api.as_ref().map(|(addr, tls)| {
            let scheme = if tls.ready() { "https" } else { "http" };
            format!("{scheme}://{addr}")
        });
        if self.last_heartbeat.is_some_and(|t| t.elapsed() < HEARTBEAT) && api == self.reported_api
        {
            return;
        }
        let mut status = machine_facts();
        status["heartbeatMs"] = json!(now_ms());
        status["instances"] = json!(self.procs.len());
        if let Some(api) = &api {
            status["agentApi"] = json!(api);
        }
        let reading = crate::agent::pressure::read(&self.dir);
        let (disk_mb, memory_mb) = self.pressure_mb;
        let now = crate::agent::pressure::conditions(&reading, disk_mb, memory_mb, &self.dir);
        for (name, message) in &now {
            if !self.pressure.contains(name) {
                tracing::warn!(condition = name, %message, "Node under pressure");
                let m = format!("node {}: {message}", self.node);
                self.event("Warning", name, None, m);
            }
        }
        for name in std::mem::take(&mut self.pressure) {
            if !now.iter().any(|(n, _)| *n == name) {
                let m = format!("node {}: {name} is over", self.node);
                self.event("Normal", &format!("{name}Relieved"), None, m);
            }
        }
        self.pressure = now.iter().map(|(n, _)| *n).collect();
        status["diskFreeMb"] = json!(reading.disk_free_mb);
        status["memoryAvailableMb"] = json!(reading.memory_available_mb);
        status["conditions"] = json!(self.pressure);
        let path = format!("/api/v1/nodes/{}/status", self.node);
        // Tried again a heartbeat interval later, whatever the outcome.
        self.last_heartbeat = Some(Instant::now());
        match client
            .call::<Value>(Method::PUT, &path, Some(&json!({"status": status})))
            .await
        {
            Ok(_) => self.reported_api = api,
            Err(e) if e.status() == Some(404) => self.register(client).await,
            Err(e) if e.status() == Some(401) => self.refused = Some(e),
            Err(e) => tracing::warn!(error = %e, "Node heartbeat failed"),
        }
    }
}

/// Queues an event (at most 1000 wait; the oldest go first).
pub(super) fn push_event(
    events: &mut Vec<Value>,
    seq: &mut u64,
    node: &str,
    kind: &str,
    reason: &str,
    instance: Option<&str>,
    message: String,
) {
    *seq += 1;
    events.push(json!({
        "apiVersion": crate::model::API_VERSION,
        "kind": "Event",
        "metadata": {"name": format!("{node}-{}-{seq}", now_ms())},
        "spec": {
            "type": kind,
            "reason": reason,
            "node": node,
            "instance": instance,
            "message": message,
            "time": crate::model::now_rfc3339(),
        },
    }));
    if events.len() > 1000 {
        events.remove(0);
    }
}
