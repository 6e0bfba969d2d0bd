//! Node pressure: free disk under the agent's data dir and available memory, checked
//! with every heartbeat against `agent.disk_pressure_mb` / `agent.memory_pressure_mb`.
//! A condition that starts or ends is a node event (`DiskPressure`, `MemoryPressure`,
//! and `...Relieved`); the node's status carries the numbers and the conditions.

use std::path::Path;

/// What one check found.
#[derive(Clone, Debug, PartialEq)]
pub struct Reading {
    pub disk_free_mb: Option<u64>,
    pub memory_available_mb: Option<u64>,
}

/// The free space (for unprivileged users) of the file system holding `dir`.
pub fn disk_free_mb(dir: &Path) -> Option<u64> {
    let s = rustix::fs::statvfs(dir).ok()?;
    Some(s.f_bavail.saturating_mul(s.f_frsize) >> 20)
}

/// `MemAvailable` of a `/proc/meminfo` text, in MiB.
pub fn memory_available_mb(meminfo: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kb| kb / 1024)
}

pub fn read(dir: &Path) -> Reading {
    Reading {
        disk_free_mb: disk_free_mb(dir),
        memory_available_mb: memory_available_mb(
            &std::fs::read_to_string("/proc/meminfo").unwrap_or_default(),
        ),
    }
}

/// The conditions that hold: (name, message), for thresholds in MiB (0 = not checked).
pub fn conditions(
    r: &Reading,
    disk_mb: u64,
    memory_mb: u64,
    dir: &Path,
) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if let Some(free) = r.disk_free_mb.filter(|f| disk_mb > 0 && *f < disk_mb) {
        out.push((
            "DiskPressure",
            format!(
                "{free} MiB free under {}, below agent.disk_pressure_mb = {disk_mb}",
                dir.display()
            ),
        ));
    }
    if let Some(avail) = r
        .memory_available_mb
        .filter(|a| memory_mb > 0 && *a < memory_mb)
    {
        out.push((
            "MemoryPressure",
            format!(
                "{avail} MiB of memory available, below agent.memory_pressure_mb = {memory_mb}"
            ),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_make_conditions() {
        let dir = Path::new("/data");
        let r = Reading {
            disk_free_mb: Some(500),
            memory_available_mb: Some(100),
        };
        let c = conditions(&r, 1024, 256, dir);
        assert_eq!(
            c.iter().map(|c| c.0).collect::<Vec<_>>(),
            ["DiskPressure", "MemoryPressure"]
        );
        assert!(c[0].1.contains("500 MiB free under /data"), "{}", c[0].1);
        assert!(conditions(&r, 100, 50, dir).is_empty());
        assert!(conditions(&r, 0, 0, dir).is_empty(), "0 turns a check off");
        assert_eq!(
            memory_available_mb("MemTotal: 100 kB\nMemAvailable:    2048000 kB\n"),
            Some(2000)
        );
        assert!(disk_free_mb(Path::new("/")).is_some());
        assert_eq!(disk_free_mb(Path::new("/no/such/dir")), None);
    }
}
