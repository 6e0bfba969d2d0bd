//! The agent's bounded local store of collected lines: JSON lines in segment files
//! (`<data_dir>/agent/logs/<first seq>.jsonl`, at most [`SEGMENT_BYTES`] each), the
//! oldest deleted once the total passes the configured cap. Sequence numbers keep
//! increasing across restarts (read back from the newest segment).

use crate::api::logs::{Filter, Record};
use std::collections::VecDeque;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

pub const SEGMENT_BYTES: u64 = 4 << 20;

pub struct Store {
    dir: PathBuf,
    cap: u64,
    /// (first seq, path, size), oldest first; the last is written to.
    segments: VecDeque<(u64, PathBuf, u64)>,
    current: Option<std::fs::File>,
    next_seq: u64,
}

impl Store {
    pub fn open(dir: &Path, cap: u64) -> std::io::Result<Store> {
        std::fs::create_dir_all(dir)?;
        let mut segments = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(first) = name
                .strip_suffix(".jsonl")
                .and_then(|n| n.parse::<u64>().ok())
            {
                segments.push((first, entry.path(), entry.metadata()?.len()));
            }
        }
        segments.sort();
        let mut next_seq = 1;
        if let Some((first, path, _)) = segments.last() {
            next_seq = *first;
            for r in read_segment(path) {
                next_seq = next_seq.max(r.seq + 1);
            }
        }
        Ok(Store {
            dir: dir.to_path_buf(),
            cap: cap.max(2 * SEGMENT_BYTES),
            segments: segments.into(),
            current: None,
            next_seq,
        })
    }

    /// The sequence number the next record gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Numbers and writes `records`.
    pub fn append(&mut self, records: &mut [Record]) -> std::io::Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::new();
        for r in records.iter_mut() {
            r.seq = self.next_seq;
            self.next_seq += 1;
            serde_json::to_writer(&mut buf, r).map_err(std::io::Error::other)?;
            buf.push(b'\n');
        }
        let full = self
            .segments
            .back()
            .is_none_or(|(_, _, size)| *size >= SEGMENT_BYTES);
        if full || self.current.is_none() {
            if full {
                let first = records[0].seq;
                let path = self.dir.join(format!("{first:020}.jsonl"));
                self.segments.push_back((first, path, 0));
            }
            let (_, path, _) = self.segments.back().expect("a segment");
            self.current = Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            );
        }
        if let (Some(f), Some(seg)) = (self.current.as_mut(), self.segments.back_mut()) {
            f.write_all(&buf)?;
            seg.2 += buf.len() as u64;
        }
        while self.segments.len() > 1 && self.segments.iter().map(|s| s.2).sum::<u64>() > self.cap {
            if let Some((_, path, _)) = self.segments.pop_front() {
                let _ = std::fs::remove_file(path);
            }
        }
        Ok(())
    }

    /// The segment files, oldest first, for reading without holding the store.
    pub fn segments(&self) -> Vec<PathBuf> {
        self.segments.iter().map(|s| s.1.clone()).collect()
    }

    /// The segments that can hold records after `after`: every one that starts after it,
    /// and the one before them.
    pub fn segments_after(&self, after: u64) -> Vec<PathBuf> {
        let from = self
            .segments
            .iter()
            .rposition(|(first, _, _)| *first <= after)
            .unwrap_or(0);
        self.segments
            .iter()
            .skip(from)
            .map(|s| s.1.clone())
            .collect()
    }
}

/// The records of one segment (a line being written, or a damaged one, is skipped).
pub fn read_segment(path: &Path) -> impl Iterator<Item = Record> {
    let lines = std::fs::File::open(path)
        .map(|f| std::io::BufReader::new(f).lines())
        .ok();
    lines
        .into_iter()
        .flatten()
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str(&l).ok())
}

/// The last `filter.limit` records after `after` that match, from `segments`.
pub fn query(segments: &[PathBuf], filter: &Filter, after: u64) -> Vec<Record> {
    let mut out = VecDeque::with_capacity(filter.limit.min(1024));
    for path in segments {
        for r in read_segment(path) {
            if r.seq > after && filter.matches(&r) {
                if out.len() == filter.limit {
                    out.pop_front();
                }
                out.push_back(r);
            }
        }
    }
    out.into()
}

/// Reads records in sequence order after a cursor, for forwarding: remembers where in
/// which segment it stopped, so following the store costs one pass over each line.
#[derive(Default)]
pub struct Reader {
    /// (segment, byte offset of the next line, seq of the last record before it).
    at: Option<(PathBuf, u64, u64)>,
}

/// What one [`Reader::read`] found.
#[derive(Debug, Default, PartialEq)]
pub struct Read {
    pub records: Vec<Record>,
    /// Records after the cursor that were no longer in the store (dropped to keep it
    /// within its cap before they were read).
    pub missed: u64,
}

impl Reader {
    /// Up to `max` records after `cursor`, in order, from `segments` (oldest first, as
    /// [`Store::segments_after`] gives them). A line still being written is left for
    /// the next call.
    pub fn read(&mut self, segments: &[PathBuf], cursor: u64, max: usize) -> std::io::Result<Read> {
        let mut out = Read::default();
        let mut expected = cursor + 1;
        let resume = match &self.at {
            Some((path, offset, last)) if *last == cursor && segments.contains(path) => {
                Some((path.clone(), *offset))
            }
            _ => None,
        };
        let start = resume
            .as_ref()
            .and_then(|(p, _)| segments.iter().position(|s| s == p))
            .unwrap_or(0);
        for (i, path) in segments.iter().enumerate().skip(start) {
            let mut f = match std::fs::File::open(path) {
                Ok(f) => f,
                // Dropped meanwhile: the next segment (or the next call) goes on.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let mut offset = match &resume {
                Some((p, o)) if i == start && p == path => *o,
                _ => 0,
            };
            if offset > 0 {
                use std::io::Seek;
                f.seek(std::io::SeekFrom::Start(offset))?;
            }
            let mut lines = std::io::BufReader::new(f);
            let mut line = Vec::new();
            loop {
                line.clear();
                let n = lines.read_until(b'\n', &mut line)?;
                if n == 0 || line.last() != Some(&b'\n') {
                    break;
                }
                offset += n as u64;
                let Ok(r) = serde_json::from_slice::<Record>(&line) else {
                    continue;
                };
                if r.seq < expected {
                    continue;
                }
                out.missed += r.seq - expected;
                expected = r.seq + 1;
                self.at = Some((path.clone(), offset, r.seq));
                out.records.push(r);
                if out.records.len() >= max {
                    return Ok(out);
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::logs::Query;

    fn rec(line: &str) -> Record {
        Record {
            seq: 0,
            t: 5,
            node: "n".into(),
            app: "echo".into(),
            unit: "rz00".into(),
            instance: Some("echo-rz00-0".into()),
            file: "stdout".into(),
            line: line.into(),
        }
    }

    #[test]
    fn records_are_numbered_bounded_and_kept_across_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path(), 0).unwrap();
        let long = "x".repeat(1000);
        let mut batch: Vec<Record> = (0..3000).map(|i| rec(&format!("{i} {long}"))).collect();
        s.append(&mut batch).unwrap();
        assert_eq!(s.next_seq(), 3001);
        for _ in 0..10 {
            let mut more: Vec<Record> = (0..3000).map(|_| rec(&long)).collect();
            s.append(&mut more).unwrap();
        }
        let total: u64 = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert!(
            total <= 2 * SEGMENT_BYTES + SEGMENT_BYTES,
            "bounded: {total}"
        );
        let next = s.next_seq();
        drop(s);
        let s = Store::open(dir.path(), 0).unwrap();
        assert_eq!(s.next_seq(), next, "numbering goes on after a restart");
        let f = Query {
            app: "echo".into(),
            limit: Some(5),
            ..Query::default()
        }
        .check()
        .unwrap();
        let last = query(&s.segments(), &f, 0);
        assert_eq!(last.len(), 5);
        assert_eq!(last[4].seq, next - 1, "the most recent");
        assert!(query(&s.segments(), &f, next - 1).is_empty());
        assert_eq!(s.segments_after(next - 1).len(), 1, "only the newest");
        assert_eq!(s.segments_after(0), s.segments());
        assert_eq!(query(&s.segments_after(next - 3), &f, next - 3).len(), 2);
        let oldest = read_segment(&s.segments()[0]).next().unwrap();
        assert!(oldest.seq > 3000, "the oldest segments were dropped");
    }

    #[test]
    fn the_reader_goes_on_where_it_stopped_and_counts_what_it_missed() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path(), 0).unwrap();
        let mut batch: Vec<Record> = (0..10).map(|i| rec(&format!("line {i}"))).collect();
        s.append(&mut batch).unwrap();
        let mut r = Reader::default();
        let first = r.read(&s.segments_after(0), 0, 4).unwrap();
        assert_eq!(
            first.records.iter().map(|r| r.seq).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
        assert_eq!(first.missed, 0);
        let next = r.read(&s.segments_after(4), 4, 100).unwrap();
        assert_eq!(next.records.len(), 6);
        assert_eq!(next.records[0].line, "line 4");
        // A cursor the reader did not leave off at (a restart) is found by scanning.
        let again = Reader::default()
            .read(&s.segments_after(7), 7, 100)
            .unwrap();
        assert_eq!(
            again.records.iter().map(|r| r.seq).collect::<Vec<_>>(),
            [8, 9, 10]
        );
        assert!(r
            .read(&s.segments_after(10), 10, 100)
            .unwrap()
            .records
            .is_empty());
        // A half-written line waits; complete, it is read.
        let seg = s.segments().pop().unwrap();
        let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
        let mut partial = serde_json::to_vec(&Record {
            seq: 11,
            ..rec("late")
        })
        .unwrap();
        f.write_all(&partial[..10]).unwrap();
        assert!(r
            .read(&s.segments_after(10), 10, 100)
            .unwrap()
            .records
            .is_empty());
        partial.push(b'\n');
        f.write_all(&partial[10..]).unwrap();
        assert_eq!(
            r.read(&s.segments_after(10), 10, 100).unwrap().records[0].line,
            "late"
        );
        // Lines dropped before they were read are counted.
        let long = "x".repeat(1000);
        let mut s2 = Store::open(&dir.path().join("small"), 0).unwrap();
        for _ in 0..12 {
            let mut more: Vec<Record> = (0..3000).map(|_| rec(&long)).collect();
            s2.append(&mut more).unwrap();
        }
        let got = Reader::default().read(&s2.segments_after(0), 0, 1).unwrap();
        assert_eq!(got.missed, got.records[0].seq - 1);
        assert!(got.missed > 0);
    }
}
