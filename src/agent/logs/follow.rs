//! Following log files as `tail -F` does: each source file is read from where it was
//! left to its end, a rotated file (a new inode at the path) is finished from the old
//! handle before the new one is opened, a truncated file is read again from its start.
//! Directories are walked for new files. Offsets are saved so that a restarted agent
//! goes on where it stopped instead of collecting everything again.

use crate::api::logs::Record;
use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Longer lines are cut into pieces of this size.
const MAX_LINE: usize = 16 << 10;
/// Read at most this much of one file per poll.
const READ_BUDGET: u64 = 4 << 20;
/// A file first seen bigger than this is read from its last [`TAIL_START`] bytes.
const BIG_FILE: u64 = 64 << 20;
const TAIL_START: u64 = 1 << 20;
/// Files followed under one log directory, at most.
const MAX_DIR_FILES: usize = 1000;

/// Something to collect: a file, or a directory whose files (recursively) are followed.
#[derive(Clone, Debug, PartialEq)]
pub struct Source {
    pub path: PathBuf,
    pub dir: bool,
    pub app: String,
    pub unit: String,
    pub instance: Option<String>,
    /// The record's `file` for a plain file (`stdout`, `stderr`).
    pub label: String,
}

struct Tail {
    file: std::fs::File,
    ino: u64,
    offset: u64,
    partial: Vec<u8>,
}

#[derive(Default)]
pub struct Collector {
    tails: HashMap<PathBuf, Tail>,
    /// Offsets saved by an earlier run: (inode, offset) per path.
    saved: BTreeMap<PathBuf, (u64, u64)>,
    node: String,
}

impl Collector {
    pub fn new(node: &str, saved: BTreeMap<PathBuf, (u64, u64)>) -> Collector {
        Collector {
            tails: HashMap::new(),
            saved,
            node: node.to_string(),
        }
    }

    /// Where each followed file is: to save, and to pass to [`Collector::new`].
    pub fn offsets(&self) -> BTreeMap<PathBuf, (u64, u64)> {
        self.tails
            .iter()
            .map(|(p, t)| (p.clone(), (t.ino, t.offset)))
            .collect()
    }

    /// Reads what is new in every source; `now_ms` stamps the records.
    pub fn poll(&mut self, sources: &[Source], now_ms: u64) -> Vec<Record> {
        let mut out = Vec::new();
        let mut live = std::collections::HashSet::new();
        for src in sources {
            let files: Vec<(PathBuf, String)> = if src.dir {
                let mut found = Vec::new();
                walk(&src.path, 0, &mut found);
                found
                    .into_iter()
                    .map(|p| {
                        let label = p.display().to_string();
                        (p, label)
                    })
                    .collect()
            } else {
                vec![(src.path.clone(), src.label.clone())]
            };
            for (path, label) in files {
                live.insert(path.clone());
                let lines = self.read(&path);
                out.extend(lines.into_iter().map(|line| Record {
                    seq: 0,
                    t: now_ms,
                    node: self.node.clone(),
                    app: src.app.clone(),
                    unit: src.unit.clone(),
                    instance: src.instance.clone(),
                    file: label.clone(),
                    line,
                }));
            }
        }
        // Files no longer in any source are let go.
        self.tails.retain(|p, _| live.contains(p));
        out
    }

    /// New complete lines of the file at `path`.
    fn read(&mut self, path: &Path) -> Vec<String> {
        let mut lines = Vec::new();
        if let Some(t) = self.tails.get_mut(path) {
            drain(t, &mut lines);
            let now = std::fs::metadata(path).ok();
            match now {
                Some(m) if m.ino() == t.ino => {
                    if m.len() < t.offset {
                        // Truncated in place: start again.
                        let _ = t.file.seek(SeekFrom::Start(0));
                        t.offset = 0;
                        t.partial.clear();
                        drain(t, &mut lines);
                    }
                    return lines;
                }
                // Rotated (or removed): the old handle was read to its end above; a
                // last line without a newline is complete now.
                _ => {
                    if !t.partial.is_empty() {
                        lines.push(cut(std::mem::take(&mut t.partial)));
                    }
                    self.tails.remove(path);
                }
            }
            // A rotated path's new file is read from its start.
            if let Some(mut t) = open(path, Some(0)) {
                drain(&mut t, &mut lines);
                self.tails.insert(path.to_path_buf(), t);
            }
            return lines;
        }
        let start = self.saved.remove(path).and_then(|(ino, off)| {
            std::fs::metadata(path)
                .ok()
                .filter(|m| m.ino() == ino && m.len() >= off)
                .map(|_| off)
        });
        if let Some(mut t) = open(path, start) {
            drain(&mut t, &mut lines);
            self.tails.insert(path.to_path_buf(), t);
        }
        lines
    }
}

/// Opens `path` at `start`, or (first sight) at its beginning, or near the end of a big
/// file.
fn open(path: &Path, start: Option<u64>) -> Option<Tail> {
    let mut file = std::fs::File::open(path).ok()?;
    let meta = file.metadata().ok()?;
    if !meta.is_file() {
        return None;
    }
    let (offset, skip_partial) = match start {
        Some(o) => (o, false),
        None if meta.len() > BIG_FILE => (meta.len() - TAIL_START, true),
        None => (0, false),
    };
    file.seek(SeekFrom::Start(offset)).ok()?;
    let mut t = Tail {
        file,
        ino: meta.ino(),
        offset,
        partial: Vec::new(),
    };
    if skip_partial {
        // Starting mid-file: skip the fragment up to the next line.
        let mut b = [0u8; 4096];
        loop {
            let n = t.file.read(&mut b).ok()?;
            if n == 0 {
                break;
            }
            if let Some(i) = b[..n].iter().position(|&c| c == b'\n') {
                t.offset += i as u64 + 1;
                break;
            }
            t.offset += n as u64;
        }
        t.file.seek(SeekFrom::Start(t.offset)).ok()?;
        tracing::debug!(path = %path.display(), from = t.offset, "Following a big log file from near its end");
    }
    Some(t)
}

/// Reads `t` to its end (within the budget), pushing complete lines.
fn drain(t: &mut Tail, lines: &mut Vec<String>) {
    let mut buf = vec![0u8; 64 << 10];
    let mut read = 0u64;
    while read < READ_BUDGET {
        let n = match t.file.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        read += n as u64;
        t.offset += n as u64;
        for &b in &buf[..n] {
            if b == b'\n' {
                lines.push(cut(std::mem::take(&mut t.partial)));
            } else {
                t.partial.push(b);
                if t.partial.len() >= MAX_LINE {
                    lines.push(cut(std::mem::take(&mut t.partial)));
                }
            }
        }
    }
}

fn cut(mut bytes: Vec<u8>) -> String {
    if bytes.last() == Some(&b'\r') {
        bytes.pop();
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    if depth > 4 || out.len() >= MAX_DIR_FILES {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.filter_map(Result::ok).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            walk(&e.path(), depth + 1, out);
        } else if ft.is_file() && out.len() < MAX_DIR_FILES {
            out.push(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn append(p: &Path, text: &str) {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }

    fn lines(c: &mut Collector, sources: &[Source]) -> Vec<String> {
        c.poll(sources, 1)
            .into_iter()
            .map(|r| format!("{}:{}", r.file.rsplit('/').next().unwrap(), r.line))
            .collect()
    }

    #[test]
    fn files_are_followed_through_rotation_truncation_and_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("logs");
        std::fs::create_dir(&logs).unwrap();
        let out = dir.path().join("stdout.log");
        let sources = vec![
            Source {
                path: out.clone(),
                dir: false,
                app: "echo".into(),
                unit: "rz00".into(),
                instance: Some("echo-rz00-0".into()),
                label: "stdout".into(),
            },
            Source {
                path: logs.clone(),
                dir: true,
                app: "echo".into(),
                unit: "rz00".into(),
                instance: None,
                label: String::new(),
            },
        ];
        let mut c = Collector::new("n1", BTreeMap::new());
        assert!(lines(&mut c, &sources).is_empty(), "nothing yet");
        append(&out, "one\ntw");
        assert_eq!(lines(&mut c, &sources), vec!["stdout:one"]);
        append(&out, "o\r\n");
        append(&logs.join("app.log"), "a1\n");
        assert_eq!(lines(&mut c, &sources), vec!["stdout:two", "app.log:a1"]);

        // Rotation by rename: the rest of the old file, then the new one.
        append(&logs.join("app.log"), "a2\na3");
        std::fs::rename(logs.join("app.log"), logs.join("app.log.1")).unwrap();
        append(&logs.join("app.log"), "b1\n");
        let got = lines(&mut c, &sources);
        assert!(got.contains(&"app.log:a2".to_string()), "{got:?}");
        assert!(got.contains(&"app.log:a3".to_string()), "{got:?}");
        assert!(got.contains(&"app.log:b1".to_string()), "{got:?}");
        // The renamed file is another path under the directory: it is followed too, from
        // its start (its lines were read under the old name, so they show again once;
        // rotation into the watched directory is the operator's choice).
        assert!(lines(&mut c, &sources).is_empty());

        // Truncation in place (copytruncate).
        std::fs::write(&out, "").unwrap();
        append(&out, "after\n");
        assert_eq!(lines(&mut c, &sources), vec!["stdout:after"]);

        // A restart goes on from the saved offsets.
        let saved = c.offsets();
        append(&out, "while away\n");
        let mut c2 = Collector::new("n1", saved);
        let got = lines(&mut c2, &sources);
        assert_eq!(got, vec!["stdout:while away"], "{got:?}");

        // Long lines are cut; a file first seen very big starts near its end.
        append(&out, &"z".repeat(MAX_LINE + 10));
        append(&out, "\n");
        let got = lines(&mut c2, &sources);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].len(), "stdout:".len() + MAX_LINE);
    }

    #[test]
    fn a_big_file_first_seen_is_read_from_near_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big.log");
        let line = format!("{}\n", "y".repeat(999));
        let mut f = std::fs::File::create(&p).unwrap();
        for _ in 0..((BIG_FILE / 1000) + 10) {
            f.write_all(line.as_bytes()).unwrap();
        }
        f.write_all(b"last\n").unwrap();
        drop(f);
        let src = [Source {
            path: p.clone(),
            dir: false,
            app: "a".into(),
            unit: "u".into(),
            instance: None,
            label: "big".into(),
        }];
        let mut c = Collector::new("n", BTreeMap::new());
        let mut got = Vec::new();
        for _ in 0..3 {
            got.extend(c.poll(&src, 1));
        }
        assert!(got.len() <= 1100, "only the tail: {}", got.len());
        assert!(got.iter().all(|r| r.line.len() == 999 || r.line == "last"));
        assert_eq!(got.last().unwrap().line, "last");
    }
}
