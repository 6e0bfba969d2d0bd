//! What upgrades leave on this node's disk, pruned: each instance keeps the unpacked
//! version it runs now and the most recent earlier ones up to `agent.keep_versions`
//! (default 2: the current one and the one a rollback goes back to), and the download
//! cache keeps only what a kept version came from. A directory a live process runs in
//! (its `/proc/PID/cwd`: an old version still serving during a surge, an adopted
//! process) is never removed. Instances no longer placed here are left alone.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// An unfinished download older than this is removed.
const PART_AGE: Duration = Duration::from_secs(3600);

#[derive(Debug, Default, PartialEq)]
pub(super) struct Pruned {
    pub dirs: usize,
    pub files: usize,
}

/// The unpacked versions (`app-<sha12>`) under one instance directory, newest first.
fn versions(dir: &Path) -> Vec<(SystemTime, PathBuf)> {
    let mut out: Vec<(SystemTime, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("app-"))
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| {
            let t = e
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            (t, e.path())
        })
        .collect();
    out.sort_by(|a, b| b.cmp(a));
    out
}

/// Prunes `agent_dir` (`<data_dir>/agent`). `current` maps each instance placed here that
/// runs from an artifact to that artifact's SHA-256; `busy` are the working directories
/// of live processes.
pub(super) fn prune(
    agent_dir: &Path,
    current: &BTreeMap<String, String>,
    busy: &BTreeSet<PathBuf>,
    keep: usize,
    now: SystemTime,
) -> Pruned {
    let mut pruned = Pruned::default();
    // Compared with /proc/PID/cwd, which has every symbolic link resolved.
    let agent_dir = &agent_dir
        .canonicalize()
        .unwrap_or_else(|_| agent_dir.to_path_buf());
    let mut kept_prefixes: BTreeSet<String> = current
        .values()
        .map(|sha| sha[..12.min(sha.len())].to_string())
        .collect();
    let instances = agent_dir.join("instances");
    for entry in std::fs::read_dir(&instances)
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        let all = versions(&entry.path());
        let Some(sha) = current.get(&name) else {
            // Not (or not from an artifact) placed here: nothing of it is removed, and
            // its versions' downloads stay cached.
            for (_, p) in &all {
                if let Some(prefix) = prefix_of(p) {
                    kept_prefixes.insert(prefix);
                }
            }
            continue;
        };
        let now_dir = entry
            .path()
            .join(format!("app-{}", &sha[..12.min(sha.len())]));
        let mut kept = usize::from(all.iter().any(|(_, p)| *p == now_dir));
        for (_, p) in &all {
            let stays = *p == now_dir || busy.iter().any(|b| b.starts_with(p)) || {
                let room = kept < keep;
                kept += usize::from(room);
                room
            };
            if stays {
                if let Some(prefix) = prefix_of(p) {
                    kept_prefixes.insert(prefix);
                }
                continue;
            }
            match std::fs::remove_dir_all(p) {
                Ok(()) => {
                    pruned.dirs += 1;
                    tracing::info!(dir = %p.display(), "Removed an old unpacked version");
                }
                Err(e) => {
                    tracing::warn!(dir = %p.display(), error = %e, "Cannot remove an old unpacked version")
                }
            }
        }
    }
    let cache = agent_dir.join("artifacts");
    for entry in std::fs::read_dir(&cache).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let doomed = if name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
            !kept_prefixes.contains(&name[..12])
        } else if name.starts_with('.') && name.ends_with(".part") {
            entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .is_some_and(|age| age >= PART_AGE)
        } else {
            false
        };
        if doomed {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => {
                    pruned.files += 1;
                    tracing::info!(file = %name, "Removed a cached download no kept version needs");
                }
                Err(e) => {
                    tracing::warn!(file = %name, error = %e, "Cannot remove a cached download")
                }
            }
        }
    }
    pruned
}

fn prefix_of(p: &Path) -> Option<String> {
    p.file_name()?
        .to_str()?
        .strip_prefix("app-")
        .map(str::to_string)
}

/// Without a new version started, the disk is looked at this often.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

impl super::Supervisor {
    /// Prunes after a pass that started or stopped a process (when a version becomes
    /// old, or stops being run from), or every [`PRUNE_EVERY`].
    pub(super) async fn prune(&mut self, current: BTreeMap<String, String>, changed: bool) {
        let due = self.last_prune.is_none_or(|t| t.elapsed() >= PRUNE_EVERY);
        if !changed && !due {
            return;
        }
        self.last_prune = Some(std::time::Instant::now());
        let busy: BTreeSet<PathBuf> = self
            .procs
            .values()
            .chain(self.retiring.iter().map(|(_, p)| p))
            .filter_map(|p| p.pid)
            .filter_map(cwd_of)
            .collect();
        let (dir, keep) = (self.dir.clone(), self.keep_versions.max(1));
        let pruned = tokio::task::spawn_blocking(move || {
            prune(&dir, &current, &busy, keep, SystemTime::now())
        })
        .await
        .unwrap_or_default();
        if pruned != Pruned::default() {
            tracing::info!(
                dirs = pruned.dirs,
                files = pruned.files,
                keep_versions = keep,
                "Pruned old versions from this node's disk"
            );
        }
    }
}

/// The working directory of live process `pid`.
pub(super) fn cwd_of(pid: u32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/cwd")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch_dir(p: &Path, age_secs: u64) {
        std::fs::create_dir_all(p).unwrap();
        std::fs::write(p.join("run.sh"), "x").unwrap();
        let t = SystemTime::now() - Duration::from_secs(age_secs);
        std::fs::File::open(p).unwrap().set_modified(t).unwrap();
    }

    #[test]
    fn keeps_the_current_the_latest_earlier_and_the_busy_versions() {
        let d = tempfile::tempdir().unwrap();
        let sha = |c: char| c.to_string().repeat(64);
        let inst = d.path().join("instances/shop-rz00-0");
        // Versions a (oldest) .. e (current); c is still running (a surge).
        for (i, c) in ['a', 'b', 'c', 'd', 'e'].into_iter().enumerate() {
            touch_dir(
                &inst.join(format!("app-{}", &sha(c)[..12])),
                500 - 100 * i as u64,
            );
            std::fs::create_dir_all(d.path().join("artifacts")).unwrap();
            std::fs::write(d.path().join("artifacts").join(sha(c)), "bytes").unwrap();
        }
        // Another instance no longer placed here keeps everything.
        touch_dir(
            &d.path()
                .join(format!("instances/gone-0/app-{}", &sha('f')[..12])),
            900,
        );
        std::fs::write(d.path().join("artifacts").join(sha('f')), "bytes").unwrap();
        std::fs::write(d.path().join("artifacts/.abc.part"), "half").unwrap();
        let current: BTreeMap<String, String> = [("shop-rz00-0".to_string(), sha('e'))].into();
        let busy: BTreeSet<PathBuf> = [inst.join(format!("app-{}", &sha('c')[..12]))].into();
        let later = SystemTime::now() + Duration::from_secs(7200);
        let pruned = prune(d.path(), &current, &busy, 2, later);
        assert_eq!(pruned, Pruned { dirs: 2, files: 3 });
        let left = |dir: &Path| -> BTreeSet<String> {
            std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        };
        let v = |c: char| format!("app-{}", &sha(c)[..12]);
        assert_eq!(left(&inst), [v('c'), v('d'), v('e')].into());
        assert_eq!(
            left(&d.path().join("artifacts")),
            [sha('c'), sha('d'), sha('e'), sha('f')].into()
        );
        // Nothing more to do the second time.
        assert_eq!(
            prune(d.path(), &current, &busy, 2, later),
            Pruned::default()
        );
    }
}
