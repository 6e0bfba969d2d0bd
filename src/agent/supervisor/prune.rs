//! What upgrades leave on this node's disk, pruned: each instance keeps the unpacked
//! version it runs now and the most recent earlier ones up to `agent.keep_versions`
//! (default 2: the current one and the one a rollback goes back to), and the download
//! cache keeps only what a kept version came from. A directory a live process runs in
//! (its `/proc/PID/cwd`: an old version still serving during a surge, an adopted
//! process) is never removed.
//!
//! The directory of an instance no longer placed here (re-placed on another node,
//! scaled away) gets a `.left` mark the first time that is seen, and is removed once
//! the mark is older than `agent.instance_dir_grace_secs` (a day by default) and no
//! live process runs in it; an instance placed here again loses its mark.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// An unfinished download older than this is removed.
const PART_AGE: Duration = Duration::from_secs(3600);
/// Marks the directory of an instance no longer placed here (its mtime: since when).
const LEFT_MARK: &str = ".left";

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

/// What is kept on this node: the instances placed here (`placed`), with the artifact
/// SHA-256 of those that run from one (`current`), the working directories of live
/// processes (`busy`), the versions per instance (`keep`), and how long the directory of
/// an instance that left stays (`left_grace`).
pub(super) struct Keep<'a> {
    pub placed: &'a BTreeSet<String>,
    pub current: &'a BTreeMap<String, String>,
    pub busy: &'a BTreeSet<PathBuf>,
    pub keep: usize,
    pub left_grace: Duration,
}

/// Prunes `agent_dir` (`<data_dir>/agent`) down to what `k` keeps.
pub(super) fn prune(agent_dir: &Path, k: &Keep<'_>, now: SystemTime) -> Pruned {
    let (current, busy, keep) = (k.current, k.busy, k.keep);
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
        let mark = entry.path().join(LEFT_MARK);
        if k.placed.contains(&name) {
            let _ = std::fs::remove_file(&mark);
        } else if !busy.iter().any(|b| b.starts_with(entry.path()))
            && left_long_ago(&mark, k.left_grace, now)
        {
            match std::fs::remove_dir_all(entry.path()) {
                Ok(()) => {
                    pruned.dirs += 1;
                    tracing::info!(instance = %name, dir = %entry.path().display(), "Removed the directory of an instance no longer placed here");
                    continue;
                }
                Err(e) => {
                    tracing::warn!(dir = %entry.path().display(), error = %e, "Cannot remove the directory of an instance no longer placed here")
                }
            }
        }
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

/// Whether the instance whose mark is `mark` left more than `grace` ago; marks it as
/// leaving now when it has no mark yet.
fn left_long_ago(mark: &Path, grace: Duration, now: SystemTime) -> bool {
    match std::fs::metadata(mark).and_then(|m| m.modified()) {
        Ok(since) => now.duration_since(since).is_ok_and(|age| age >= grace),
        Err(_) => {
            if let Err(e) = std::fs::write(mark, b"") {
                tracing::warn!(file = %mark.display(), error = %e, "Cannot mark an instance directory as left");
            }
            false
        }
    }
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
    pub(super) async fn prune(
        &mut self,
        placed: BTreeSet<String>,
        current: BTreeMap<String, String>,
        changed: bool,
    ) {
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
        let (dir, keep, left_grace) = (
            self.dir.clone(),
            self.keep_versions.max(1),
            self.instance_dir_grace,
        );
        let pruned = tokio::task::spawn_blocking(move || {
            let k = Keep {
                placed: &placed,
                current: &current,
                busy: &busy,
                keep,
                left_grace,
            };
            prune(&dir, &k, SystemTime::now())
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
        let placed: BTreeSet<String> = ["shop-rz00-0".to_string()].into();
        let k = Keep {
            placed: &placed,
            current: &current,
            busy: &busy,
            keep: 2,
            left_grace: Duration::from_secs(86400),
        };
        let pruned = prune(d.path(), &k, later);
        assert_eq!(pruned, Pruned { dirs: 2, files: 3 });
        // The instance that left is marked, not removed yet.
        assert!(d.path().join("instances/gone-0/.left").is_file());
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
        assert_eq!(prune(d.path(), &k, later), Pruned::default());
        // A day after it left, its directory goes, and its download with it.
        let day_later = later + Duration::from_secs(86400 + 7200);
        assert_eq!(prune(d.path(), &k, day_later), Pruned { dirs: 1, files: 1 });
        assert!(!d.path().join("instances/gone-0").exists());
        assert!(inst.is_dir());
    }

    #[test]
    fn an_instance_that_comes_back_or_still_runs_keeps_its_directory() {
        let d = tempfile::tempdir().unwrap();
        let back = d.path().join("instances/back-0");
        let running = d.path().join("instances/running-0");
        touch_dir(&back.join("app-aaaaaaaaaaaa"), 10);
        touch_dir(&running.join("app-bbbbbbbbbbbb"), 10);
        let now = SystemTime::now();
        let (current, none) = (BTreeMap::new(), BTreeSet::new());
        let busy: BTreeSet<PathBuf> = [running.join("app-bbbbbbbbbbbb")].into();
        let mut placed = BTreeSet::new();
        let k = |placed: &'_ BTreeSet<String>, busy: &'_ BTreeSet<PathBuf>| {
            prune(
                d.path(),
                &Keep {
                    placed,
                    current: &current,
                    busy,
                    keep: 2,
                    left_grace: Duration::from_secs(60),
                },
                now + Duration::from_secs(3600),
            )
        };
        // Both marked (the running one is not, it is busy); then `back` is placed again.
        k(&placed, &busy);
        assert!(back.join(".left").is_file());
        placed.insert("back-0".to_string());
        k(&placed, &busy);
        assert!(
            !back.join(".left").exists(),
            "the mark goes when it comes back"
        );
        // The busy one is neither marked nor removed while its process lives; once it
        // is gone, it is marked, and removed after the grace (here: the pass an hour on).
        k(&placed, &busy);
        assert!(running.is_dir() && !running.join(".left").exists());
        k(&placed, &none);
        assert!(running.join(".left").is_file());
        k(&placed, &none);
        assert!(back.is_dir());
        assert!(!running.exists());
    }
}
