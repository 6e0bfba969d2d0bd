//! Linearizability checking for histories recorded against tessera's control KV store.
//!
//! Client threads record every operation into a shared [`History`]: `invoke_*` before the
//! request is sent, then exactly one of [`History::ok`] (answered, with the revision the
//! answer carried), [`History::info`] (outcome unknown: timeout, connection error) or
//! [`History::fail`] (certainly not applied, e.g. 503 "not leader"). Two independent
//! checkers then judge the history:
//!
//! * [`check_revisions`] and [`check_final_state`], O(n log n), use the revisions (Raft
//!   log indexes): real-time order implies revision order (reads never go backwards),
//!   no phantom values, distinct revisions for acknowledged writes, every read returns
//!   the value of the latest write at or below the revision it observed, and every
//!   acknowledged write survives in the final state unless superseded.
//! * [`check_wgl`], the Wing–Gong/Lowe search with memoization, per key, within time and
//!   memory budgets. It ignores revisions, so it cross-checks the first on short windows.
//!
//! Model: each key is an independent register that starts absent (use fresh keys per
//! run; [`check_wgl_with_initial`] takes other initial values). A put stores its value, a
//! delete makes the key absent, a get returns the value or `None` for absent. Revisions
//! are global across keys. Writes should use values unique per key (e.g. `c3-17`):
//! duplicates are handled soundly but weaken the revision checker.
//!
//! Guarantees: both checkers are sound: a history produced by a linearizable store whose
//! revisions mean what ARCHITECTURE.md says is never reported as violating (no false
//! alarm). A WGL verdict of `NotLinearizable` is a proof; a budget overrun is `Unknown`,
//! never a pass. Unknown-outcome writes may take effect at any point after their
//! invocation, or never (Knossos semantics); unknown-outcome gets are dropped. The
//! revision checker is deliberately incomplete around unknown-outcome writes (see
//! [`check_revisions`]). Nothing here panics on odd input: malformed ops are reported.

// todc-utils 0.1.x was evaluated and not used: its WGLChecker runs an unbounded search
// (no time or memory budget, returns a bare bool, no explanation) and needs a response
// for every call (unknown outcomes must be faked as responses appended at the end; an
// incomplete history panics). Hence this std-only implementation.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Index of an op in its [`History`] (its position in [`History::ops`]).
pub type OpId = usize;

/// What an operation does to one key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// Store `value`.
    Put { value: String },
    /// Make the key absent.
    Delete,
    /// Read; `result` is `None` when the key was absent (and before the answer arrives).
    Get { result: Option<String> },
}

/// One recorded operation. Times are nanoseconds since the history's epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    pub id: OpId,
    pub client: usize,
    pub key: String,
    pub kind: OpKind,
    /// When the request was about to be sent.
    pub invoke: u64,
    /// When the answer arrived; `None` = outcome unknown (a write may or may not have
    /// taken effect, at any time after `invoke`; an unknown get is ignored).
    pub complete: Option<u64>,
    /// The revision the answer carried (commit index of a write, observed index of a get).
    pub revision: Option<u64>,
}

impl Op {
    pub fn is_write(&self) -> bool {
        !matches!(self.kind, OpKind::Get { .. })
    }

    /// For a write, what it leaves in the register (`Some(None)` for a delete).
    pub fn written(&self) -> Option<Option<&str>> {
        match &self.kind {
            OpKind::Put { value } => Some(Some(value)),
            OpKind::Delete => Some(None),
            OpKind::Get { .. } => None,
        }
    }

    /// For a get, what it returned.
    pub fn read(&self) -> Option<Option<&str>> {
        match &self.kind {
            OpKind::Get { result } => Some(result.as_deref()),
            _ => None,
        }
    }
}

fn ms(ns: u64) -> String {
    format!("{:.3}ms", ns as f64 / 1e6)
}

fn val(v: Option<&str>) -> String {
    match v {
        Some(s) => format!("{s:?}"),
        None => "absent".to_string(),
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{} c{} ", self.id, self.client)?;
        match &self.kind {
            OpKind::Put { value } => write!(f, "put {:?}={value:?}", self.key)?,
            OpKind::Delete => write!(f, "delete {:?}", self.key)?,
            OpKind::Get { result } => {
                write!(f, "get {:?} -> {}", self.key, val(result.as_deref()))?
            }
        }
        match self.complete {
            Some(c) => write!(f, " [{}..{}]", ms(self.invoke), ms(c))?,
            None => write!(f, " [{}..unknown]", ms(self.invoke))?,
        }
        match (self.complete, self.revision) {
            (Some(_), Some(r)) => write!(f, " rev {r}"),
            _ => Ok(()),
        }
    }
}

/// Where a recorded op stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Invoked, no outcome recorded yet (treated as unknown by [`History::ops`]).
    Pending,
    Ok,
    Unknown,
    /// Certainly not applied; left out of [`History::ops`].
    Failed,
}

/// A history that many client threads record into (`Send + Sync`).
///
/// The first outcome recorded for an op wins; outcomes for unknown ids are ignored.
pub struct History {
    epoch: Instant,
    slots: Mutex<Vec<(Op, Status)>>,
}

impl Default for History {
    fn default() -> Self {
        History::new()
    }
}

impl History {
    pub fn new() -> History {
        History {
            epoch: Instant::now(),
            slots: Mutex::new(Vec::new()),
        }
    }

    pub fn epoch(&self) -> Instant {
        self.epoch
    }

    /// Nanoseconds since the epoch.
    pub fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> MutexGuard<'_, Vec<(Op, Status)>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the invocation of `kind` on `key` by `client`; call it before sending.
    pub fn invoke(&self, client: usize, key: &str, kind: OpKind) -> OpId {
        // Time taken before the lock: an earlier invoke only widens the interval.
        let invoke = self.now();
        let mut slots = self.lock();
        let id = slots.len();
        slots.push((
            Op {
                id,
                client,
                key: key.to_string(),
                kind,
                invoke,
                complete: None,
                revision: None,
            },
            Status::Pending,
        ));
        id
    }

    pub fn invoke_put(&self, client: usize, key: &str, value: &str) -> OpId {
        let value = value.to_string();
        self.invoke(client, key, OpKind::Put { value })
    }

    pub fn invoke_delete(&self, client: usize, key: &str) -> OpId {
        self.invoke(client, key, OpKind::Delete)
    }

    pub fn invoke_get(&self, client: usize, key: &str) -> OpId {
        self.invoke(client, key, OpKind::Get { result: None })
    }

    fn resolve(&self, id: OpId, status: Status, result: Option<String>, revision: Option<u64>) {
        let mut slots = self.lock();
        // Time taken under the lock, after the answer: a later completion only widens.
        let now = self.now();
        let Some((op, st)) = slots.get_mut(id) else {
            return;
        };
        if *st != Status::Pending {
            return;
        }
        *st = status;
        if status == Status::Ok {
            op.complete = Some(now.max(op.invoke));
            op.revision = revision;
            if let OpKind::Get { result: r } = &mut op.kind {
                *r = result;
            }
        }
    }

    /// The op was answered: `result` is a get's value (ignored for writes), `revision`
    /// the revision the answer carried.
    pub fn ok(&self, id: OpId, result: Option<String>, revision: Option<u64>) {
        self.resolve(id, Status::Ok, result, revision);
    }

    /// A write was acknowledged at `revision`.
    pub fn ok_write(&self, id: OpId, revision: u64) {
        self.resolve(id, Status::Ok, None, Some(revision));
    }

    /// A get answered `result` at `revision`.
    pub fn ok_get(&self, id: OpId, result: Option<String>, revision: u64) {
        self.resolve(id, Status::Ok, result, Some(revision));
    }

    /// Outcome unknown (timeout, connection error, 5xx after sending).
    pub fn info(&self, id: OpId) {
        self.resolve(id, Status::Unknown, None, None);
    }

    /// Certainly not applied (e.g. refused before anything was proposed).
    pub fn fail(&self, id: OpId) {
        self.resolve(id, Status::Failed, None, None);
    }

    /// Adds a complete op with explicit times (imports, synthetic histories); its `id`
    /// is replaced by the new one, returned. `complete: None` records an unknown outcome.
    pub fn record(&self, mut op: Op) -> OpId {
        let mut slots = self.lock();
        op.id = slots.len();
        let id = op.id;
        let status = if op.complete.is_some() {
            Status::Ok
        } else {
            Status::Unknown
        };
        if op.complete.is_none() {
            op.revision = None;
        }
        slots.push((op, status));
        id
    }

    pub fn status(&self, id: OpId) -> Option<Status> {
        self.lock().get(id).map(|(_, s)| *s)
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The ops to check: answered and unknown ones (pending counts as unknown); failed
    /// ops are left out.
    pub fn ops(&self) -> Vec<Op> {
        self.lock()
            .iter()
            .filter(|(_, s)| *s != Status::Failed)
            .map(|(op, s)| {
                let mut op = op.clone();
                if *s != Status::Ok {
                    op.complete = None;
                    op.revision = None;
                }
                op
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------
// Check 1: revisions.
// ---------------------------------------------------------------------------------------

/// What a violation is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ViolationKind {
    /// The op itself makes no sense (completes before it was invoked).
    Malformed,
    /// An op invoked after another completed carries a lower revision (for a write: not
    /// a higher one).
    RevisionOrder,
    /// A get invoked after another get completed observed a lower revision.
    ReadWentBackwards,
    /// Two acknowledged writes share a revision.
    DuplicateRevision,
    /// A get returned a value no write (invoked before the get completed) wrote.
    PhantomValue,
    /// A get returned something other than the latest write at or below its revision.
    WrongValue,
    /// No revision exists at which an unknown-outcome write explains every get that
    /// must have seen it.
    UnknownWriteInconsistent,
    /// The final state lost an acknowledged write (or holds a value nothing explains).
    LostWrite,
}

#[derive(Clone, Debug)]
pub struct Violation {
    pub kind: ViolationKind,
    /// The ops involved, the offending one first.
    pub ops: Vec<OpId>,
    /// Human-readable, with every involved op described.
    pub message: String,
}

/// The outcome of [`check_revisions`] or [`check_final_state`].
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub violations: Vec<Violation>,
    /// Observations that are not violations (ops that could only be checked partly).
    pub notes: Vec<String>,
    /// Ops taken into account.
    pub ops_checked: usize,
}

impl Report {
    pub fn is_ok(&self) -> bool {
        self.violations.is_empty()
    }

    pub fn count(&self, kind: ViolationKind) -> usize {
        self.violations.iter().filter(|v| v.kind == kind).count()
    }

    pub fn has(&self, kind: ViolationKind) -> bool {
        self.count(kind) > 0
    }
}

const SHOW: usize = 50;

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} ops checked, {} violation(s)",
            self.ops_checked,
            self.violations.len()
        )?;
        for v in self.violations.iter().take(SHOW) {
            writeln!(f, "- {:?}: {}", v.kind, v.message)?;
        }
        if self.violations.len() > SHOW {
            writeln!(f, "- ... and {} more", self.violations.len() - SHOW)?;
        }
        for n in &self.notes {
            writeln!(f, "note: {n}")?;
        }
        Ok(())
    }
}

/// Revision-based checks (a)–(e), in O(n log n) plus the unknown-write analysis.
///
/// (a) if A completed before B was invoked, rev(A) <= rev(B), strictly when B is a
/// write (B's entry is appended after everything A saw or wrote), across all keys;
/// (b) reads never go backwards in real time; this covers each client's sequential
/// reads, and the message says when both reads are one client's; (c) every value a get
/// returned was written by a write invoked before the get completed; (d) acknowledged
/// writes have distinct revisions; (e) a get that observed R returns the value of the
/// latest acknowledged write to its key with revision <= R (absent if none), unless an
/// unknown-outcome write can explain it.
///
/// Unknown-outcome writes have no revision. One that a get's value is attributed to must
/// fit at some revision u: above every revision completed before it was invoked, above
/// the latest acknowledged write below each such get, at or below each such get's
/// revision, not an acknowledged write's revision, and outside every window (p, R] in
/// which a get proves no unknown write to that key landed. Weakenings, all in the
/// permissive direction: a value that several unknown writes could explain is accepted
/// without constraining any of them; orderings between two unknown writes are not
/// checked; a write acknowledged without a revision is treated as unknown-outcome; a get
/// without a revision is only checked for phantom values.
pub fn check_revisions(ops: &[Op]) -> Report {
    let a = Analysis::new(ops);
    Report {
        violations: a.violations,
        notes: a.notes,
        ops_checked: a.ops.len(),
    }
}

/// (f): every acknowledged write is in `final_state` (key -> value, a missing key means
/// absent) unless a later write by revision superseded it; a final value that differs
/// from the latest acknowledged write must come from an unknown-outcome write that can
/// be placed after it. Keys never written in `ops` are not checked. Only final-state
/// violations are reported (run [`check_revisions`] for the rest).
pub fn check_final_state(ops: &[Op], final_state: &HashMap<String, Option<String>>) -> Report {
    let a = Analysis::new(ops);
    let mut report = Report {
        violations: Vec::new(),
        notes: Vec::new(),
        ops_checked: a.ops.len(),
    };
    for (key, kd) in &a.keys {
        if kd.acked.is_empty() && kd.unknown.is_empty() {
            continue;
        }
        let observed = final_state.get(*key).cloned().flatten();
        let observed = observed.as_deref();
        let last = kd.acked.last().map(|&i| a.ops[i]);
        let last_rev = last.and_then(|w| w.revision).unwrap_or(0);
        let expected = last.and_then(|w| w.written()).flatten();
        if observed == expected {
            continue;
        }
        let excl = a.exclusions(key);
        let explained = kd.unknown.iter().any(|u| {
            let op = a.ops[u.idx];
            op.written() == Some(observed) && first_free(&excl, u.lo.max(last_rev), u.hi).is_some()
        });
        if explained {
            continue;
        }
        let mut ids = Vec::new();
        let mut msg = format!("final state of {key:?} is {}", val(observed));
        match last {
            Some(w) => {
                ids.push(w.id);
                msg += &format!(
                    ", but the latest acknowledged write is {w} (expected {})",
                    val(expected)
                );
            }
            None => msg += ", but no acknowledged write to it exists (expected absent)",
        }
        let sources: Vec<&Op> = kd
            .acked
            .iter()
            .map(|&i| a.ops[i])
            .filter(|w| w.written() == Some(observed))
            .collect();
        if let Some(old) = sources.last() {
            ids.push(old.id);
            msg += &format!("; the final value comes from the older {old}");
        } else if kd
            .unknown
            .iter()
            .any(|u| a.ops[u.idx].written() == Some(observed))
        {
            msg += "; the unknown-outcome write of that value cannot be placed after it";
        } else if observed.is_some() {
            msg += "; no write of that value exists";
        }
        report.violations.push(Violation {
            kind: ViolationKind::LostWrite,
            ops: ids,
            message: msg,
        });
    }
    report
}

/// An unknown-outcome write and the revision window (lo, hi] it must fall in.
struct Unknown {
    idx: usize,
    /// The highest revision completed before it was invoked.
    floor: u64,
    lo: u64,
    hi: u64,
    /// Gets attributed to it: (get index, p, R).
    attributed: Vec<(usize, u64, u64)>,
}

#[derive(Default)]
struct KeyData<'a> {
    /// Acknowledged writes with revisions, sorted by revision.
    acked: Vec<usize>,
    unknown: Vec<Unknown>,
    /// Written value -> (acknowledged writers, positions in `unknown`).
    by_value: HashMap<Option<&'a str>, (Vec<usize>, Vec<usize>)>,
    /// Windows (p, R] where a get proves no unknown write to the key landed.
    exclusions: Vec<(u64, u64)>,
}

struct Analysis<'a> {
    ops: Vec<&'a Op>,
    violations: Vec<Violation>,
    notes: Vec<String>,
    keys: BTreeMap<&'a str, KeyData<'a>>,
    /// Revisions of all acknowledged writes, sorted.
    acked_revs: Vec<u64>,
}

/// Revision known: the op completed and carried one.
fn rev_of(op: &Op) -> Option<u64> {
    op.complete.and(op.revision)
}

impl<'a> Analysis<'a> {
    fn new(all: &'a [Op]) -> Analysis<'a> {
        let mut violations = Vec::new();
        let mut notes = Vec::new();
        let mut ops: Vec<&Op> = Vec::new();
        let (mut unrev_writes, mut unrev_gets) = (0, 0);
        for op in all {
            if let Some(c) = op.complete {
                if c < op.invoke {
                    violations.push(Violation {
                        kind: ViolationKind::Malformed,
                        ops: vec![op.id],
                        message: format!("{op} completes before it was invoked; ignored"),
                    });
                    continue;
                }
                if op.revision.is_none() {
                    if op.is_write() {
                        unrev_writes += 1;
                    } else {
                        unrev_gets += 1;
                    }
                }
            } else if !op.is_write() {
                continue; // unknown get: no information
            }
            ops.push(op);
        }
        if unrev_writes > 0 {
            notes.push(format!(
                "{unrev_writes} write(s) acknowledged without a revision: treated as unknown-outcome"
            ));
        }
        if unrev_gets > 0 {
            notes.push(format!(
                "{unrev_gets} get(s) answered without a revision: only checked for phantom values"
            ));
        }
        let mut a = Analysis {
            ops,
            violations,
            notes,
            keys: BTreeMap::new(),
            acked_revs: Vec::new(),
        };
        let floor = a.order_check();
        a.duplicate_check();
        a.value_check(&floor);
        a
    }

    /// (a)/(b); returns, per op, the highest revision completed before it was invoked.
    fn order_check(&mut self) -> Vec<u64> {
        let n = self.ops.len();
        let mut by_complete: Vec<usize> =
            (0..n).filter(|&i| rev_of(self.ops[i]).is_some()).collect();
        by_complete.sort_by_key(|&i| self.ops[i].complete);
        let mut by_invoke: Vec<usize> = (0..n).collect();
        by_invoke.sort_by_key(|&i| self.ops[i].invoke);
        let mut floor = vec![0u64; n];
        // Highest (revision, op) completed so far: any op, any get, each client's gets.
        let mut best: Option<(u64, usize)> = None;
        let mut best_get: Option<(u64, usize)> = None;
        let mut client_get: HashMap<usize, (u64, usize)> = HashMap::new();
        let raise = |slot: &mut Option<(u64, usize)>, r: u64, i: usize| {
            if slot.is_none_or(|(br, _)| r > br) {
                *slot = Some((r, i));
            }
        };
        let mut j = 0;
        for &b in &by_invoke {
            let ob = self.ops[b];
            while j < by_complete.len() && self.ops[by_complete[j]].complete < Some(ob.invoke) {
                let i = by_complete[j];
                let oi = self.ops[i];
                let r = rev_of(oi).unwrap_or(0);
                raise(&mut best, r, i);
                if !oi.is_write() {
                    raise(&mut best_get, r, i);
                    let mut c = client_get.get(&oi.client).copied();
                    raise(&mut c, r, i);
                    if let Some(c) = c {
                        client_get.insert(oi.client, c);
                    }
                }
                j += 1;
            }
            let Some((br, bi)) = best else { continue };
            floor[b] = br;
            let Some(rb) = rev_of(ob) else { continue };
            let bad = if ob.is_write() { rb <= br } else { rb < br };
            if !bad {
                continue;
            }
            // The witness: for a get, a read the same client or anyone completed earlier
            // at a higher revision if there is one, else the op with the highest revision.
            let mut witness = (
                bi,
                ViolationKind::RevisionOrder,
                "revision order violated".to_string(),
            );
            if !ob.is_write() {
                if let Some(&(_, ci)) = client_get.get(&ob.client).filter(|(cr, _)| *cr > rb) {
                    let what = format!("client {}'s reads went backwards", ob.client);
                    witness = (ci, ViolationKind::ReadWentBackwards, what);
                } else if let Some((_, gi)) = best_get.filter(|(gr, _)| *gr > rb) {
                    witness = (
                        gi,
                        ViolationKind::ReadWentBackwards,
                        "reads went backwards".to_string(),
                    );
                }
            }
            let (wi, kind, what) = witness;
            let oa = self.ops[wi];
            let ra = rev_of(oa).unwrap_or(0);
            let cmp = if ob.is_write() {
                "at or below"
            } else {
                "below"
            };
            self.violations.push(Violation {
                kind,
                ops: vec![ob.id, oa.id],
                message: format!(
                    "{what}: {ob} was invoked after {oa} completed, yet its revision {rb} is {cmp} {ra}"
                ),
            });
        }
        floor
    }

    /// (d).
    fn duplicate_check(&mut self) {
        let mut by_rev: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
        for (i, op) in self.ops.iter().enumerate() {
            if op.is_write() {
                if let Some(r) = rev_of(op) {
                    by_rev.entry(r).or_default().push(i);
                }
            }
        }
        for (r, is) in &by_rev {
            if is.len() > 1 {
                let list: Vec<String> = is.iter().map(|&i| self.ops[i].to_string()).collect();
                self.violations.push(Violation {
                    kind: ViolationKind::DuplicateRevision,
                    ops: is.iter().map(|&i| self.ops[i].id).collect(),
                    message: format!(
                        "{} acknowledged writes share revision {r}: {}",
                        is.len(),
                        list.join("; ")
                    ),
                });
            }
        }
        self.acked_revs = by_rev.keys().copied().collect();
    }

    /// (c), (e) and the unknown-write windows.
    fn value_check(&mut self, floor: &[u64]) {
        let mut keys: BTreeMap<&'a str, KeyData<'a>> = BTreeMap::new();
        let mut gets: Vec<usize> = Vec::new();
        for (i, op) in self.ops.iter().enumerate() {
            let kd = keys.entry(op.key.as_str()).or_default();
            let Some(w) = op.written() else {
                gets.push(i);
                continue;
            };
            let slot = kd.by_value.entry(w).or_default();
            if rev_of(op).is_some() {
                kd.acked.push(i);
                slot.0.push(i);
            } else {
                slot.1.push(kd.unknown.len());
                kd.unknown.push(Unknown {
                    idx: i,
                    floor: floor[i],
                    lo: floor[i],
                    hi: u64::MAX,
                    attributed: Vec::new(),
                });
            }
        }
        for kd in keys.values_mut() {
            kd.acked.sort_by_key(|&i| rev_of(self.ops[i]));
        }
        for g in gets {
            if let Some(kd) = keys.get_mut(self.ops[g].key.as_str()) {
                self.check_get(kd, g);
            }
        }
        self.keys = keys;
        // Unknown writes that gets were attributed to must fit somewhere.
        let mut found = Vec::new();
        for (key, kd) in &self.keys {
            let excl = self.exclusions(key);
            for u in &kd.unknown {
                if u.attributed.is_empty() || first_free(&excl, u.lo, u.hi).is_some() {
                    continue;
                }
                let uop = self.ops[u.idx];
                let mut gets: Vec<String> = u
                    .attributed
                    .iter()
                    .take(5)
                    .map(|&(g, p, r)| format!("{} (needs ({p}, {r}])", self.ops[g]))
                    .collect();
                if u.attributed.len() > 5 {
                    gets.push(format!("{} more", u.attributed.len() - 5));
                }
                let mut ids = vec![uop.id];
                ids.extend(u.attributed.iter().map(|&(g, _, _)| self.ops[g].id));
                found.push(Violation {
                    kind: ViolationKind::UnknownWriteInconsistent,
                    ops: ids,
                    message: format!(
                        "unknown-outcome {uop} must have landed above revision {} (completed before it was invoked) and within ({}, {}] to explain {}, but every revision there is an acknowledged write's or excluded by gets that saw no unknown write",
                        u.floor,
                        u.lo,
                        u.hi,
                        gets.join("; ")
                    ),
                });
            }
        }
        self.violations.extend(found);
    }

    fn check_get(&mut self, kd: &mut KeyData<'a>, g: usize) {
        let og = self.ops[g];
        let Some(got) = og.read() else { return };
        let Some(done) = og.complete else { return };
        let (acked_of, unknown_of) = kd.by_value.get(&got).cloned().unwrap_or_default();
        // (c) phantom values.
        if let Some(v) = got {
            let writers = acked_of
                .iter()
                .map(|&i| self.ops[i])
                .chain(unknown_of.iter().map(|&k| self.ops[kd.unknown[k].idx]));
            let mut first = None;
            let mut in_time = false;
            for w in writers {
                first = first.or(Some(w));
                in_time |= w.invoke <= done;
            }
            if !in_time {
                let (msg, ids) = match first {
                    None => (format!("{og}: no write of {v:?} to this key exists"), vec![og.id]),
                    Some(w) => (
                        format!("{og}: the only write(s) of {v:?} were invoked after the get completed, e.g. {w}"),
                        vec![og.id, w.id],
                    ),
                };
                self.violations.push(Violation {
                    kind: ViolationKind::PhantomValue,
                    ops: ids,
                    message: msg,
                });
                return;
            }
        }
        // (e) the value at the observed revision.
        let Some(r) = og.revision else { return };
        let pos = kd
            .acked
            .partition_point(|&i| rev_of(self.ops[i]).unwrap_or(0) <= r);
        let last = pos.checked_sub(1).map(|p| self.ops[kd.acked[p]]);
        let p = last.and_then(rev_of).unwrap_or(0);
        let expected = last.and_then(|w| w.written()).flatten();
        if got == expected {
            // If no unknown write could have written this value, none landed in (p, r].
            if unknown_of.is_empty() && p < r {
                kd.exclusions.push((p, r));
            }
            return;
        }
        let candidates: Vec<usize> = unknown_of
            .iter()
            .copied()
            .filter(|&k| {
                let u = &kd.unknown[k];
                self.ops[u.idx].invoke <= done && u.lo.max(p) < r
            })
            .collect();
        if let [k] = candidates[..] {
            // The only unknown write that can explain the value: it landed in (p, r].
            let u = &mut kd.unknown[k];
            u.lo = u.lo.max(p);
            u.hi = u.hi.min(r);
            u.attributed.push((g, p, r));
        }
        if !candidates.is_empty() {
            return;
        }
        let mut ids = vec![og.id];
        let mut msg = format!("{og} observed revision {r}, but ");
        match last {
            Some(w) => {
                ids.push(w.id);
                msg += &format!("the latest acknowledged write at or below it is {w}");
            }
            None => msg += "no acknowledged write to the key is at or below it (expected absent)",
        }
        for w in acked_of.iter().map(|&i| self.ops[i]).take(4) {
            ids.push(w.id);
            match rev_of(w) {
                Some(wr) if wr > r => {
                    msg += &format!("; the value was written later: {w} (read from the future)")
                }
                _ => msg += &format!("; the value is stale: {w} was overwritten"),
            }
        }
        for u in unknown_of.iter().map(|&k| &kd.unknown[k]).take(4) {
            let w = self.ops[u.idx];
            ids.push(w.id);
            msg += &format!(
                "; unknown-outcome {w} cannot have landed in ({p}, {r}] (it needs a revision above {})",
                u.lo
            );
        }
        self.violations.push(Violation {
            kind: ViolationKind::WrongValue,
            ops: ids,
            message: msg,
        });
    }

    /// Revisions no unknown write to `key` can take: get windows and acknowledged
    /// writes' revisions, merged into disjoint, non-adjacent (a, b] intervals.
    fn exclusions(&self, key: &str) -> Vec<(u64, u64)> {
        let mut iv: Vec<(u64, u64)> = self
            .keys
            .get(key)
            .map(|kd| kd.exclusions.clone())
            .unwrap_or_default();
        iv.extend(
            self.acked_revs
                .iter()
                .filter(|&&r| r > 0)
                .map(|&r| (r - 1, r)),
        );
        iv.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(iv.len());
        for (a, b) in iv {
            match merged.last_mut() {
                Some(last) if a <= last.1 => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        merged
    }
}

/// The smallest integer in (lo, hi] not covered by the merged (a, b] intervals.
fn first_free(merged: &[(u64, u64)], lo: u64, hi: u64) -> Option<u64> {
    let mut x = lo.checked_add(1)?;
    // The interval that could cover x: the last one with a < x.
    let k = merged.partition_point(|&(a, _)| a < x);
    if k > 0 && merged[k - 1].1 >= x {
        x = merged[k - 1].1.checked_add(1)?;
    }
    (x <= hi).then_some(x)
}

// ---------------------------------------------------------------------------------------
// Check 2: Wing-Gong / Lowe search.
// ---------------------------------------------------------------------------------------

/// Budgets for [`check_wgl`]. Whatever runs out first turns the key's verdict into
/// [`Verdict::Unknown`].
#[derive(Clone, Debug)]
pub struct WglBudget {
    /// Search time for one key.
    pub per_key: Duration,
    /// Search time for all keys together; keys not reached are `Unknown`.
    pub total: Duration,
    /// Memory for one key's memo table (estimated).
    pub max_memory_bytes: usize,
}

impl Default for WglBudget {
    fn default() -> Self {
        WglBudget {
            per_key: Duration::from_secs(10),
            total: Duration::from_secs(60),
            max_memory_bytes: 1 << 30,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// With an explanation: the shortest failing prefix and the ops involved.
    NotLinearizable(String),
    /// The budget ran out (or the input was malformed): no verdict. Not a pass.
    Unknown(String),
}

#[derive(Clone, Debug)]
pub struct KeyOutcome {
    pub verdict: Verdict,
    /// Ops searched (answered ops and unknown-outcome writes).
    pub ops: usize,
    /// Memo entries created.
    pub states: u64,
    pub elapsed: Duration,
}

#[derive(Clone, Debug, Default)]
pub struct WglReport {
    pub keys: BTreeMap<String, KeyOutcome>,
    pub elapsed: Duration,
}

impl WglReport {
    /// Every key was proven linearizable.
    pub fn is_linearizable(&self) -> bool {
        self.keys
            .values()
            .all(|k| k.verdict == Verdict::Linearizable)
    }

    /// Some key was proven not linearizable.
    pub fn has_violation(&self) -> bool {
        !self.violations().is_empty()
    }

    /// (key, explanation) of every key proven not linearizable.
    pub fn violations(&self) -> Vec<(&str, &str)> {
        self.keys
            .iter()
            .filter_map(|(k, o)| match &o.verdict {
                Verdict::NotLinearizable(e) => Some((k.as_str(), e.as_str())),
                _ => None,
            })
            .collect()
    }

    /// (key, reason) of every key without a verdict.
    pub fn unknown(&self) -> Vec<(&str, &str)> {
        self.keys
            .iter()
            .filter_map(|(k, o)| match &o.verdict {
                Verdict::Unknown(e) => Some((k.as_str(), e.as_str())),
                _ => None,
            })
            .collect()
    }
}

impl fmt::Display for WglReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "WGL: {} key(s) in {:?}: {} not linearizable, {} unknown",
            self.keys.len(),
            self.elapsed,
            self.violations().len(),
            self.unknown().len()
        )?;
        for (k, o) in &self.keys {
            let (what, text) = match &o.verdict {
                Verdict::Linearizable => continue,
                Verdict::NotLinearizable(e) => ("NOT LINEARIZABLE", e),
                Verdict::Unknown(e) => ("unknown", e),
            };
            writeln!(
                f,
                "key {k:?} ({} ops, {} states, {:?}): {what}\n{text}",
                o.ops, o.states, o.elapsed
            )?;
        }
        Ok(())
    }
}

/// WGL per key (registers are independent: P-compositionality), every key starting
/// absent. Unknown-outcome writes may be linearized anywhere after their invocation or
/// not at all; unknown gets are dropped; revisions are ignored.
pub fn check_wgl(ops: &[Op], budget: &WglBudget) -> WglReport {
    check_wgl_with_initial(ops, &HashMap::new(), budget)
}

/// [`check_wgl`] with initial values for some keys (for windows cut from a longer run).
pub fn check_wgl_with_initial(
    ops: &[Op],
    initial: &HashMap<String, Option<String>>,
    budget: &WglBudget,
) -> WglReport {
    let start = Instant::now();
    let total_deadline = far(start, budget.total);
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in ops {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    let mut report = WglReport::default();
    for (key, kops) in by_key {
        let now = Instant::now();
        let outcome = if now >= total_deadline {
            KeyOutcome {
                verdict: Verdict::Unknown(format!(
                    "total budget of {:?} exhausted before this key was searched",
                    budget.total
                )),
                ops: kops.len(),
                states: 0,
                elapsed: Duration::ZERO,
            }
        } else {
            let deadline = far(now, budget.per_key).min(total_deadline);
            let init = initial.get(key).cloned().flatten();
            wgl_key(&kops, init.as_deref(), deadline, budget)
        };
        report.keys.insert(key.to_string(), outcome);
    }
    report.elapsed = start.elapsed();
    report
}

fn far(from: Instant, d: Duration) -> Instant {
    from.checked_add(d)
        .unwrap_or_else(|| from + Duration::from_secs(365 * 86_400))
}

const NIL: usize = usize::MAX;

fn wgl_key<'a>(
    ops: &[&'a Op],
    initial: Option<&'a str>,
    deadline: Instant,
    budget: &WglBudget,
) -> KeyOutcome {
    let started = Instant::now();
    let outcome = |verdict: Verdict, ops: usize, states: u64| KeyOutcome {
        verdict,
        ops,
        states,
        elapsed: started.elapsed(),
    };
    // The ops to linearize: answered ones and unknown-outcome writes.
    let mut sel: Vec<&'a Op> = Vec::with_capacity(ops.len());
    for &op in ops {
        match op.complete {
            Some(c) if c < op.invoke => {
                return outcome(
                    Verdict::Unknown(format!("malformed op {op}: completes before invoked")),
                    ops.len(),
                    0,
                )
            }
            None if !op.is_write() => {}
            _ => sel.push(op),
        }
    }
    // Values interned; 0 = absent.
    let mut ids: HashMap<Option<&'a str>, u64> = HashMap::new();
    ids.insert(None, 0);
    let mut names: Vec<Option<&'a str>> = vec![None];
    let mut intern = |v: Option<&'a str>| -> u64 {
        *ids.entry(v).or_insert_with(|| {
            names.push(v);
            names.len() as u64 - 1
        })
    };
    let init = intern(initial);
    // (is_write, value)
    let action: Vec<(bool, u64)> = sel
        .iter()
        .map(|op| match (op.written(), op.read()) {
            (Some(w), _) => (true, intern(w)),
            (None, Some(r)) => (false, intern(r)),
            (None, None) => (false, 0),
        })
        .collect();
    // Sound and complete reductions for unknown-outcome writes (`ret` = the response
    // time the search uses):
    // * one whose value no get completing after its invocation returned is dropped:
    //   removing it from a linearization keeps it valid (no read can sit between it and
    //   the next write to the key);
    // * the only writer of a value (other than the initial one) that gets returned must
    //   precede every such get, so it responds when the first of them completed.
    let mut reads: HashMap<u64, (u64, u64)> = HashMap::new(); // value -> (first, last) completion
    let mut writers: HashMap<u64, usize> = HashMap::new();
    for (op, &(is_write, v)) in sel.iter().zip(&action) {
        if is_write {
            *writers.entry(v).or_default() += 1;
        } else if let Some(c) = op.complete {
            let t = reads.entry(v).or_insert((c, c));
            *t = (t.0.min(c), t.1.max(c));
        }
    }
    let mut kept: Vec<(&'a Op, (bool, u64), Option<u64>)> = Vec::with_capacity(sel.len());
    for (op, &(is_write, v)) in sel.iter().zip(&action) {
        let mut ret = op.complete;
        if is_write && ret.is_none() {
            match reads.get(&v) {
                None => continue,
                Some(&(_, last)) if last < op.invoke => continue,
                Some(&(first, _)) if v != init && writers.get(&v) == Some(&1) => {
                    ret = Some(first.max(op.invoke))
                }
                Some(_) => {}
            }
        }
        kept.push((op, (is_write, v), ret));
    }
    let searched = sel.len();
    let sel: Vec<&'a Op> = kept.iter().map(|k| k.0).collect();
    let action: Vec<(bool, u64)> = kept.iter().map(|k| k.1).collect();
    let ret: Vec<Option<u64>> = kept.iter().map(|k| k.2).collect();
    let n = sel.len();
    let known = ret.iter().filter(|r| r.is_some()).count();
    if known == 0 {
        return outcome(Verdict::Linearizable, searched, 0);
    }

    // Events sorted by time, calls before returns at equal times (equal = concurrent);
    // unknown outcomes return at the end of time.
    let mut events: Vec<(u64, u8, usize)> = Vec::with_capacity(2 * n);
    for (i, op) in sel.iter().enumerate() {
        events.push((op.invoke, 0, i));
        events.push((ret[i].unwrap_or(u64::MAX), 1, i));
    }
    events.sort_unstable();
    // A doubly linked list over the events: node 0 is the head, 2n+1 the tail.
    let tail = 2 * n + 1;
    let mut next: Vec<usize> = (1..=tail + 1).collect();
    let mut prev: Vec<usize> = (0..=tail).map(|i| i.wrapping_sub(1)).collect();
    next[tail] = NIL;
    prev[0] = NIL;
    let mut node_op = vec![0usize; tail + 1];
    let mut node_call = vec![false; tail + 1];
    let mut ret_node = vec![0usize; n];
    for (k, &(_, kind, i)) in events.iter().enumerate() {
        let node = k + 1;
        node_op[node] = i;
        node_call[node] = kind == 0;
        if kind == 1 {
            ret_node[i] = node;
        }
    }
    let mut s = Search {
        next,
        prev,
        node_op,
        node_call,
        ret_node,
        action,
        known: ret.iter().map(Option::is_some).collect(),
        zobrist: (0..n as u64).map(|i| mix(i ^ 0x5eed)).collect(),
        bits: vec![0u64; n.div_ceil(64) + 1],
        zset: 0,
        memo: Memo::new(n.div_ceil(64) + 1),
        stack: Vec::new(),
        state: init,
        remaining: known,
    };
    let mut steps: u64 = 0;
    // Diagnostics: the furthest return event the search got stuck at.
    let mut furthest: usize = 0;
    let mut furthest_op: Option<usize> = None;
    let mut stuck_states: BTreeSet<u64> = BTreeSet::new();
    let mut best_tail: Vec<usize> = Vec::new();
    let mut best_len = 0usize;
    let refuted = |s: &Search, furthest_op, stuck: &BTreeSet<u64>, tail: &[usize], len| {
        if s.memo.full {
            let why = "memory budget exhausted (memo full)".to_string();
            return outcome(Verdict::Unknown(why), searched, s.memo.len() as u64);
        }
        let why = explain(&sel, &names, furthest_op, stuck, tail, len);
        outcome(Verdict::NotLinearizable(why), searched, s.memo.len() as u64)
    };
    // NIL: a fresh level of the search; scanning starts at the head.
    let mut entry = NIL;
    loop {
        steps += 1;
        if steps & 0xfff == 0 {
            let why = if Instant::now() >= deadline {
                Some("time budget exhausted")
            } else if s.memo.full || s.memo.bytes() > budget.max_memory_bytes {
                Some("memory budget exhausted")
            } else {
                None
            };
            if let Some(why) = why {
                let at = furthest_op
                    .map(|i| format!("; furthest point reached: the completion of {}", sel[i]))
                    .unwrap_or_default();
                return outcome(
                    Verdict::Unknown(format!(
                        "{why} after {} states and {:?}{at}",
                        s.memo.len(),
                        started.elapsed()
                    )),
                    searched,
                    s.memo.len() as u64,
                );
            }
        }
        if entry == NIL {
            // A read that can take effect now dominates every alternative at this level
            // (reads change nothing, and taking effect earlier only relaxes real-time
            // constraints), so it goes first and its alternatives are never tried.
            let mut e = s.next[0];
            while e != tail && s.node_call[e] {
                let (is_write, v) = s.action[s.node_op[e]];
                if !is_write && v == s.state {
                    break;
                }
                e = s.next[e];
            }
            if e != tail && s.node_call[e] {
                if s.try_lift(e) {
                    if s.remaining == 0 {
                        return outcome(Verdict::Linearizable, searched, s.memo.len() as u64);
                    }
                    continue;
                }
                // Explored before from this very state: this level fails.
                match s.backtrack() {
                    Some(e) => entry = e,
                    None => return refuted(&s, furthest_op, &stuck_states, &best_tail, best_len),
                }
                continue;
            }
            entry = s.next[0];
        }
        if entry == tail {
            // Past every return: only unknown-outcome ops are left, and they may never
            // take effect (`remaining` is 0 here; anything else would be a bug).
            let verdict = if s.remaining == 0 {
                Verdict::Linearizable
            } else {
                Verdict::Unknown("internal error: search ran past the last return".into())
            };
            return outcome(verdict, searched, s.memo.len() as u64);
        }
        let i = s.node_op[entry];
        if s.node_call[entry] {
            if s.try_lift(entry) {
                if s.remaining == 0 {
                    return outcome(Verdict::Linearizable, searched, s.memo.len() as u64);
                }
                entry = NIL;
            } else {
                entry = s.next[entry];
            }
            continue;
        }
        if !s.known[i] {
            // An unknown outcome never has to take effect.
            entry = s.next[entry];
            continue;
        }
        // A return: this op had to take effect by now and has not. Backtrack.
        if entry >= furthest {
            if entry > furthest {
                furthest = entry;
                furthest_op = Some(i);
                stuck_states.clear();
                best_len = s.stack.len();
                let from = best_len.saturating_sub(10);
                best_tail = s.stack[from..].iter().map(|&(c, _)| s.node_op[c]).collect();
            }
            if stuck_states.len() < 8 {
                stuck_states.insert(s.state);
            }
        }
        match s.backtrack() {
            Some(e) => entry = e,
            None => return refuted(&s, furthest_op, &stuck_states, &best_tail, best_len),
        }
    }
}

/// The WGL search state: the event list (dancing links), the partial linearization and
/// the memo of (linearized set, register state) pairs already explored.
struct Search {
    next: Vec<usize>,
    prev: Vec<usize>,
    node_op: Vec<usize>,
    node_call: Vec<bool>,
    ret_node: Vec<usize>,
    /// Per op: (is a write, value id written or read).
    action: Vec<(bool, u64)>,
    /// Per op: it has a (possibly inferred) response, so it must take effect.
    known: Vec<bool>,
    zobrist: Vec<u64>,
    /// Linearized-set bitset; the last word holds the state when used as a memo key.
    bits: Vec<u64>,
    /// XOR of `zobrist` over the linearized set.
    zset: u64,
    memo: Memo,
    /// (call node, state before it) per linearized op.
    stack: Vec<(usize, u64)>,
    state: u64,
    /// Known ops not yet linearized.
    remaining: usize,
}

impl Search {
    fn unlink(&mut self, x: usize) {
        let (p, n) = (self.prev[x], self.next[x]);
        self.next[p] = n;
        self.prev[n] = p;
    }

    fn relink(&mut self, x: usize) {
        let (p, n) = (self.prev[x], self.next[x]);
        self.next[p] = x;
        self.prev[n] = x;
    }

    /// Linearizes the op of call node `c` now, if the model allows it and the resulting
    /// (set, state) is new.
    fn try_lift(&mut self, c: usize) -> bool {
        let i = self.node_op[c];
        let (is_write, v) = self.action[i];
        if !is_write && v != self.state {
            return false;
        }
        let new_state = if is_write { v } else { self.state };
        let last = self.bits.len() - 1;
        self.bits[i / 64] |= 1 << (i % 64);
        self.bits[last] = new_state;
        let zset = self.zset ^ self.zobrist[i];
        if !self
            .memo
            .insert(zset ^ mix(new_state ^ 0x57a7e), &self.bits)
        {
            self.bits[i / 64] &= !(1 << (i % 64));
            return false;
        }
        self.zset = zset;
        self.stack.push((c, self.state));
        self.state = new_state;
        self.unlink(c);
        self.unlink(self.ret_node[i]);
        if self.known[i] {
            self.remaining -= 1;
        }
        true
    }

    /// Undoes the last linearization and returns the node to resume scanning at; reads
    /// are undone without trying alternatives (see the eager-read rule). `None` when
    /// nothing is left to undo: no linearization exists.
    fn backtrack(&mut self) -> Option<usize> {
        loop {
            let (c, state) = self.stack.pop()?;
            let i = self.node_op[c];
            self.state = state;
            self.bits[i / 64] &= !(1 << (i % 64));
            self.zset ^= self.zobrist[i];
            if self.known[i] {
                self.remaining += 1;
            }
            self.relink(self.ret_node[i]);
            self.relink(c);
            if self.action[i].0 {
                return Some(self.next[c]);
            }
        }
    }
}

/// splitmix64's finalizer.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Passes an already well-mixed u64 key through.
#[derive(Default, Clone, Copy)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

const END: u32 = u32::MAX;

/// A set of fixed-width keys stored contiguously, found by a precomputed hash.
struct Memo {
    width: usize,
    arena: Vec<u64>,
    heads: HashMap<u64, u32, BuildHasherDefault<PassThrough>>,
    chain: Vec<u32>,
    /// An insert was refused for lack of ids: "already there" answers are unreliable.
    full: bool,
}

impl Memo {
    fn new(width: usize) -> Memo {
        Memo {
            width,
            arena: Vec::new(),
            heads: HashMap::default(),
            chain: Vec::new(),
            full: false,
        }
    }

    fn len(&self) -> usize {
        self.chain.len()
    }

    fn bytes(&self) -> usize {
        self.arena.capacity() * 8 + self.chain.capacity() * 4 + self.heads.capacity() * 16
    }

    /// Adds `key` (hash `h`); false if it was there already (or the memo is full).
    fn insert(&mut self, h: u64, key: &[u64]) -> bool {
        let first = self.heads.get(&h).copied().unwrap_or(END);
        let mut k = first;
        while k != END {
            let at = k as usize * self.width;
            if self.arena[at..at + self.width] == *key {
                return false;
            }
            k = self.chain[k as usize];
        }
        let id = match u32::try_from(self.chain.len()) {
            Ok(id) if id != END => id,
            _ => {
                self.full = true;
                return false;
            }
        };
        self.arena.extend_from_slice(key);
        self.chain.push(first);
        self.heads.insert(h, id);
        true
    }
}

fn explain(
    sel: &[&Op],
    names: &[Option<&str>],
    furthest_op: Option<usize>,
    stuck_states: &BTreeSet<u64>,
    best_tail: &[usize],
    best_len: usize,
) -> String {
    let Some(x) = furthest_op.map(|i| sel[i]) else {
        return "no linearization exists".to_string();
    };
    let xc = x.complete.unwrap_or(u64::MAX);
    let in_prefix = sel.iter().filter(|o| o.invoke <= xc).count();
    let states: Vec<String> = stuck_states
        .iter()
        .map(|&s| val(names.get(s as usize).copied().flatten()))
        .collect();
    let mut out = format!(
        "the shortest failing prefix ends at the completion of {x} ({in_prefix} ops invoked by then): no linearization of it exists.\n\
         where {x} had to take effect, the register held one of: {}\n",
        states.join(", ")
    );
    let concurrent: Vec<&&Op> = sel
        .iter()
        .filter(|o| o.id != x.id && o.invoke <= xc && o.complete.is_none_or(|c| c >= x.invoke))
        .collect();
    out += &format!("ops concurrent with it ({}):\n", concurrent.len());
    for o in concurrent.iter().take(15) {
        out += &format!("  {o}\n");
    }
    if concurrent.len() > 15 {
        out += "  ...\n";
    }
    let mut before: Vec<&&Op> = sel
        .iter()
        .filter(|o| o.is_write() && o.complete.is_some_and(|c| c < x.invoke))
        .collect();
    before.sort_by_key(|o| std::cmp::Reverse(o.complete));
    out += "latest writes completed before it was invoked:\n";
    for o in before.iter().take(5) {
        out += &format!("  {o}\n");
    }
    out += &format!(
        "the longest partial linearization that got this far has {best_len} ops, ending with:\n"
    );
    for &i in best_tail {
        out += &format!("  {}\n", sel[i]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(
        id: usize,
        client: usize,
        key: &str,
        v: &str,
        t: (u64, Option<u64>),
        rev: Option<u64>,
    ) -> Op {
        Op {
            id,
            client,
            key: key.into(),
            kind: OpKind::Put { value: v.into() },
            invoke: t.0,
            complete: t.1,
            revision: rev,
        }
    }

    fn get(id: usize, client: usize, key: &str, r: Option<&str>, t: (u64, u64), rev: u64) -> Op {
        Op {
            id,
            client,
            key: key.into(),
            kind: OpKind::Get {
                result: r.map(String::from),
            },
            invoke: t.0,
            complete: Some(t.1),
            revision: Some(rev),
        }
    }

    fn quick() -> WglBudget {
        WglBudget {
            per_key: Duration::from_secs(1),
            total: Duration::from_secs(2),
            max_memory_bytes: 256 << 20,
        }
    }

    fn finals(pairs: &[(&str, Option<&str>)]) -> HashMap<String, Option<String>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.map(String::from)))
            .collect()
    }

    /// A small PRNG (splitmix64).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }

        fn pct(&mut self, p: u64) -> bool {
            self.below(100) < p
        }
    }

    enum Phase {
        Idle,
        Invoked(usize),
        Applied(usize),
    }

    /// Simulates clients against a sequential store with a global revision counter:
    /// each op takes effect at a point strictly inside its interval. Some writes time
    /// out: they take effect later (possibly after the client moved on) or never.
    fn simulate(
        seed: u64,
        clients: usize,
        keys: usize,
        n_ops: usize,
        unknown_pct: u64,
    ) -> (Vec<Op>, HashMap<String, Option<String>>) {
        let mut rng = Rng(seed);
        let mut ops: Vec<Op> = Vec::new();
        let mut unknown: Vec<bool> = Vec::new();
        let mut reg: HashMap<String, Option<String>> = HashMap::new();
        let mut rev = 0u64;
        let mut phase: Vec<Phase> = (0..clients).map(|_| Phase::Idle).collect();
        let mut limbo: Vec<usize> = Vec::new();
        let mut t = 0u64;
        let apply =
            |op: &mut Op, reg: &mut HashMap<String, Option<String>>, rev: &mut u64| match &mut op
                .kind
            {
                OpKind::Get { result } => {
                    *result = reg.get(&op.key).cloned().flatten();
                    op.revision = Some(*rev);
                }
                kind => {
                    *rev += 1;
                    let v = match kind {
                        OpKind::Put { value } => Some(value.clone()),
                        _ => None,
                    };
                    reg.insert(op.key.clone(), v);
                    op.revision = Some(*rev);
                }
            };
        loop {
            t += 1;
            let all_idle = phase.iter().all(|p| matches!(p, Phase::Idle));
            if ops.len() >= n_ops && all_idle {
                break;
            }
            if !limbo.is_empty() && rng.pct(5) {
                let k = rng.below(limbo.len() as u64) as usize;
                let i = limbo.swap_remove(k);
                apply(&mut ops[i], &mut reg, &mut rev);
                ops[i].revision = None;
                continue;
            }
            let c = rng.below(clients as u64) as usize;
            match phase[c] {
                Phase::Idle => {
                    if ops.len() >= n_ops {
                        continue;
                    }
                    let id = ops.len();
                    let key = format!("k{}", rng.below(keys as u64));
                    let roll = rng.below(100);
                    let kind = if roll < 45 {
                        OpKind::Put {
                            value: format!("v{id}"),
                        }
                    } else if roll < 52 {
                        OpKind::Delete
                    } else {
                        OpKind::Get { result: None }
                    };
                    ops.push(Op {
                        id,
                        client: c,
                        key,
                        kind,
                        invoke: t * 1000,
                        complete: None,
                        revision: None,
                    });
                    unknown.push(rng.pct(unknown_pct));
                    phase[c] = Phase::Invoked(id);
                }
                Phase::Invoked(i) => {
                    if unknown[i] && ops[i].is_write() {
                        // Timed out: takes effect later, or never.
                        if rng.pct(60) {
                            limbo.push(i);
                        }
                        phase[c] = Phase::Idle;
                    } else {
                        apply(&mut ops[i], &mut reg, &mut rev);
                        phase[c] = Phase::Applied(i);
                    }
                }
                Phase::Applied(i) => {
                    if unknown[i] {
                        ops[i].revision = None; // an unknown get
                    } else {
                        ops[i].complete = Some(t * 1000);
                    }
                    phase[c] = Phase::Idle;
                }
            }
        }
        for op in ops.iter_mut() {
            if op.complete.is_none() {
                op.revision = None;
            }
        }
        (ops, reg)
    }

    #[test]
    fn linearizable_history_passes_both() {
        // c0 puts a then b; c1 reads concurrently with the second put and sees either.
        let ops = vec![
            put(0, 0, "x", "a", (0, Some(10)), Some(1)),
            put(1, 0, "x", "b", (20, Some(40)), Some(3)),
            get(2, 1, "x", Some("a"), (15, 30), 2),
            get(3, 2, "x", Some("b"), (25, 35), 3),
            get(4, 1, "x", Some("b"), (41, 50), 4),
            get(5, 2, "y", None, (0, 5), 0),
        ];
        let r = check_revisions(&ops);
        assert!(r.is_ok(), "{r}");
        let f = check_final_state(&ops, &finals(&[("x", Some("b"))]));
        assert!(f.is_ok(), "{f}");
        let w = check_wgl(&ops, &quick());
        assert!(w.is_linearizable(), "{w}");
    }

    #[test]
    fn history_builder_records_from_threads() {
        let h = std::sync::Arc::new(History::new());
        let threads: Vec<_> = (0..4)
            .map(|c| {
                let h = h.clone();
                std::thread::spawn(move || {
                    for k in 0..25 {
                        let id = h.invoke_put(c, &format!("k{c}"), &format!("v{c}-{k}"));
                        h.ok_write(id, 0); // revisions assigned below
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(h.len(), 100);
        let f = h.invoke_get(9, "k0");
        h.fail(f);
        h.ok(f, Some("late".into()), Some(1)); // ignored: first outcome wins
        let u = h.invoke_put(9, "k0", "maybe");
        h.info(u);
        let p = h.invoke_get(9, "k0"); // never resolved: unknown, dropped
        h.ok(12345, None, None); // unknown id: ignored
        let ops = h.ops();
        assert_eq!(ops.len(), 102);
        assert!(ops.iter().all(|o| o.id != f));
        assert_eq!(h.status(u), Some(Status::Unknown));
        assert_eq!(h.status(p), Some(Status::Pending));
        assert!(ops
            .iter()
            .filter(|o| o.complete.is_some())
            .all(|o| o.complete.unwrap() >= o.invoke));
    }

    #[test]
    fn stale_read_is_flagged_by_both() {
        // put a, put b (completed), then a get invoked afterwards returns a.
        let base = vec![
            put(0, 0, "x", "a", (0, Some(10)), Some(1)),
            put(1, 0, "x", "b", (20, Some(30)), Some(2)),
        ];
        // Variant 1: the stale get reports an old revision (a lagging follower).
        let mut ops = base.clone();
        ops.push(get(2, 1, "x", Some("a"), (40, 50), 1));
        let r = check_revisions(&ops);
        assert!(r.has(ViolationKind::RevisionOrder), "{r}");
        let w = check_wgl(&ops, &quick());
        assert!(w.has_violation(), "{w}");
        let (_, why) = w.violations()[0];
        assert!(why.contains("#2"), "{why}");
        // Variant 2: it claims a fresh revision but returns the old value.
        let mut ops = base.clone();
        ops.push(get(2, 1, "x", Some("a"), (40, 50), 2));
        let r = check_revisions(&ops);
        assert!(r.has(ViolationKind::WrongValue), "{r}");
        assert!(r.to_string().contains("stale"), "{r}");
        assert!(check_wgl(&ops, &quick()).has_violation());
        // A client's reads going backwards.
        let mut ops = base;
        ops.push(get(2, 1, "x", Some("b"), (40, 50), 2));
        ops.push(get(3, 1, "x", Some("a"), (60, 70), 1));
        let r = check_revisions(&ops);
        assert!(r.has(ViolationKind::ReadWentBackwards), "{r}");
        assert!(r.to_string().contains("client 1's reads"), "{r}");
        assert!(check_wgl(&ops, &quick()).has_violation());
    }

    #[test]
    fn phantom_value_is_flagged() {
        let ops = vec![
            put(0, 0, "x", "a", (0, Some(10)), Some(1)),
            get(1, 1, "x", Some("ghost"), (20, 30), 1),
            // Written only after the get completed: also phantom.
            get(2, 1, "x", Some("later"), (40, 50), 1),
            put(3, 0, "x", "later", (60, Some(70)), Some(2)),
        ];
        let r = check_revisions(&ops);
        assert_eq!(r.count(ViolationKind::PhantomValue), 2, "{r}");
        assert!(check_wgl(&ops, &quick()).has_violation());
    }

    #[test]
    fn duplicate_revisions_and_read_from_future_are_flagged() {
        let ops = vec![
            put(0, 0, "x", "a", (0, Some(10)), Some(5)),
            put(1, 1, "y", "b", (0, Some(10)), Some(5)),
            put(2, 0, "x", "c", (20, Some(30)), Some(7)),
            get(3, 1, "x", Some("c"), (20, 30), 6),
        ];
        let r = check_revisions(&ops);
        assert!(r.has(ViolationKind::DuplicateRevision), "{r}");
        assert!(r.has(ViolationKind::WrongValue), "{r}");
        assert!(r.to_string().contains("future"), "{r}");
    }

    #[test]
    fn lost_acknowledged_write_is_flagged_by_final_state() {
        let ops = vec![
            put(0, 0, "x", "a", (0, Some(10)), Some(1)),
            put(1, 0, "x", "b", (20, Some(30)), Some(2)),
            put(2, 0, "y", "c", (20, Some(30)), Some(3)),
        ];
        let f = check_final_state(&ops, &finals(&[("x", Some("a")), ("y", Some("c"))]));
        assert_eq!(f.count(ViolationKind::LostWrite), 1, "{f}");
        assert!(f.to_string().contains("older"), "{f}");
        // A key that vanished entirely.
        let f = check_final_state(&ops, &finals(&[("x", Some("b"))]));
        assert_eq!(f.count(ViolationKind::LostWrite), 1, "{f}");
        assert!(check_final_state(&ops, &finals(&[("x", Some("b")), ("y", Some("c"))])).is_ok());
    }

    #[test]
    fn unknown_put_whose_value_appears_passes() {
        let ops = vec![
            put(0, 0, "x", "a", (0, Some(10)), Some(1)),
            put(1, 1, "x", "maybe", (12, None), None),
            get(2, 2, "x", Some("a"), (15, 20), 2),
            get(3, 2, "x", Some("maybe"), (50, 60), 4),
            get(4, 2, "x", Some("maybe"), (70, 80), 5),
        ];
        let r = check_revisions(&ops);
        assert!(r.is_ok(), "{r}");
        let f = check_final_state(&ops, &finals(&[("x", Some("maybe"))]));
        assert!(f.is_ok(), "{f}");
        // ... and never taking effect is fine too.
        assert!(check_final_state(&ops[..3], &finals(&[("x", Some("a"))])).is_ok());
        assert!(check_wgl(&ops, &quick()).is_linearizable());
        assert!(check_wgl(&ops[..3], &quick()).is_linearizable());
    }

    #[test]
    fn unknown_put_without_a_consistent_revision_is_flagged() {
        // The unknown write is seen after b (so after revision 5), then b is read again
        // at revision 8 as if the unknown write had not landed in (5, 8].
        let ops = vec![
            put(0, 1, "x", "maybe", (0, None), None),
            put(1, 0, "x", "b", (10, Some(20)), Some(5)),
            get(2, 2, "x", Some("maybe"), (30, 40), 6),
            get(3, 2, "x", Some("b"), (50, 60), 8),
        ];
        let r = check_revisions(&ops);
        assert!(r.has(ViolationKind::UnknownWriteInconsistent), "{r}");
        assert!(check_wgl(&ops, &quick()).has_violation());
        // An unknown write invoked after the get completed cannot explain it.
        let ops = vec![
            put(0, 0, "x", "a", (0, Some(10)), Some(1)),
            get(1, 2, "x", Some("maybe"), (20, 30), 2),
            put(2, 1, "x", "maybe", (40, None), None),
        ];
        assert!(check_revisions(&ops).has(ViolationKind::PhantomValue));
        // The final state cannot hold it once an acknowledged write followed it.
        let ops = vec![
            put(0, 1, "x", "maybe", (0, None), None),
            get(1, 2, "x", Some("maybe"), (10, 20), 3),
            put(2, 0, "x", "c", (30, Some(40)), Some(5)),
        ];
        assert!(check_revisions(&ops).is_ok());
        assert!(check_final_state(&ops, &finals(&[("x", Some("c"))])).is_ok());
        let f = check_final_state(&ops, &finals(&[("x", Some("maybe"))]));
        assert!(f.has(ViolationKind::LostWrite), "{f}");
    }

    #[test]
    fn weird_input_does_not_panic() {
        let ops = vec![
            put(0, 0, "x", "a", (10, Some(5)), Some(1)),
            get(1, 0, "x", Some("a"), (0, 0), u64::MAX),
            put(0, 0, "", "", (u64::MAX, Some(u64::MAX)), Some(0)),
            Op {
                id: 7,
                client: 0,
                key: "x".into(),
                kind: OpKind::Get { result: None },
                invoke: 3,
                complete: Some(4),
                revision: None,
            },
        ];
        let r = check_revisions(&ops);
        assert!(r.has(ViolationKind::Malformed), "{r}");
        let _ = check_final_state(&ops, &HashMap::new());
        let w = check_wgl(&ops, &quick());
        assert!(!w.is_linearizable());
        assert!(matches!(w.keys["x"].verdict, Verdict::Unknown(_)), "{w}");
        assert!(check_revisions(&[]).is_ok());
        assert!(check_wgl(&[], &quick()).is_linearizable());
    }

    #[test]
    fn random_linearizable_histories_pass_all_checks() {
        for seed in 0..40 {
            let (ops, fin) = simulate(seed, 6, 3, 400, 8);
            let r = check_revisions(&ops);
            assert!(r.is_ok(), "seed {seed}: {r}");
            let f = check_final_state(&ops, &fin);
            assert!(f.is_ok(), "seed {seed}: {f}");
            let w = check_wgl(&ops, &quick());
            assert!(w.is_linearizable(), "seed {seed}: {w}");
        }
    }

    #[test]
    fn corrupted_random_histories_are_flagged() {
        for seed in 100..110 {
            let (mut ops, _) = simulate(seed, 6, 2, 300, 5);
            let g = ops
                .iter()
                .rposition(|o| !o.is_write() && o.complete.is_some())
                .unwrap();
            ops[g].kind = OpKind::Get {
                result: Some("never-written".into()),
            };
            assert!(check_revisions(&ops).has(ViolationKind::PhantomValue));
            assert!(check_wgl(&ops, &quick()).has_violation(), "seed {seed}");
        }
    }

    #[test]
    fn large_random_history_passes_wgl_quickly() {
        let (ops, fin) = simulate(7, 12, 1, 2000, 3);
        let started = Instant::now();
        let w = check_wgl(&ops, &quick());
        assert!(w.is_linearizable(), "{w}");
        assert!(started.elapsed() < Duration::from_millis(900), "{w}");
        assert!(check_revisions(&ops).is_ok());
        assert!(check_final_state(&ops, &fin).is_ok());
    }

    #[test]
    fn exponentially_hard_history_is_unknown() {
        // 28 concurrent writes, then a read of a value none wrote: refuting it means
        // trying every order of the writes (n * 2^(n-1) memo states).
        let mut ops: Vec<Op> = (0..28)
            .map(|i| put(i, i, "x", &format!("w{i}"), (0, Some(100)), None))
            .collect();
        ops.push(get(28, 99, "x", Some("w-none"), (200, 300), 0));
        let budget = WglBudget {
            per_key: Duration::from_millis(300),
            total: Duration::from_secs(1),
            max_memory_bytes: 256 << 20,
        };
        let started = Instant::now();
        let w = check_wgl(&ops, &budget);
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(!w.is_linearizable() && !w.has_violation(), "{w}");
        let (_, why) = w.unknown()[0];
        assert!(why.contains("budget"), "{why}");
        // The total budget covers later keys too.
        let mut more = ops.clone();
        more.push(get(29, 0, "y", None, (0, 1), 0));
        let budget = WglBudget {
            total: Duration::from_millis(200),
            ..budget
        };
        let w = check_wgl(&more, &budget);
        assert!(matches!(w.keys["y"].verdict, Verdict::Unknown(_)), "{w}");
    }

    #[test]
    fn wgl_explains_the_failing_prefix() {
        let ops = vec![
            put(0, 0, "x", "a", (0, Some(10)), Some(1)),
            put(1, 0, "x", "b", (20, Some(30)), Some(2)),
            get(2, 1, "x", Some("a"), (40, 50), 2),
            // After the failure: not part of the shortest failing prefix.
            put(3, 0, "x", "c", (60, Some(70)), Some(3)),
        ];
        let w = check_wgl(&ops, &quick());
        let (_, why) = w.violations()[0];
        assert!(why.contains("completion of #2"), "{why}");
        assert!(why.contains("\"b\""), "{why}");
        assert!(why.contains("(3 ops invoked"), "{why}");
    }

    /// Linearizability by exhaustive search over orders (tiny histories only).
    fn brute_force(ops: &[Op]) -> bool {
        let ops: Vec<&Op> = ops
            .iter()
            .filter(|o| o.is_write() || o.complete.is_some())
            .collect();
        fn go(ops: &[&Op], placed: &mut Vec<bool>, state: Option<&str>) -> bool {
            if ops
                .iter()
                .zip(placed.iter())
                .all(|(o, &p)| p || o.complete.is_none())
            {
                return true;
            }
            for b in 0..ops.len() {
                if placed[b] {
                    continue;
                }
                // Everything that completed before b was invoked must be placed already.
                let ready = (0..ops.len())
                    .all(|a| placed[a] || ops[a].complete.is_none_or(|c| c >= ops[b].invoke));
                if !ready {
                    continue;
                }
                let next = match (ops[b].written(), ops[b].read()) {
                    (Some(w), _) => w,
                    (None, Some(r)) if r == state => state,
                    _ => continue,
                };
                placed[b] = true;
                let ok = go(ops, placed, next);
                placed[b] = false;
                if ok {
                    return true;
                }
            }
            false
        }
        go(&ops, &mut vec![false; ops.len()], None)
    }

    #[test]
    fn wgl_agrees_with_brute_force_on_small_histories() {
        let mut rng = Rng(42);
        let vals = [None, Some("a"), Some("b"), Some("c")];
        let (mut yes, mut no) = (0, 0);
        for _ in 0..4000 {
            let n = 1 + rng.below(7) as usize;
            let ops: Vec<Op> = (0..n)
                .map(|id| {
                    let invoke = rng.below(20);
                    let complete = Some(invoke + rng.below(10));
                    let v = vals[rng.below(4) as usize];
                    let (kind, complete) = match rng.below(10) {
                        0..=3 => {
                            let unknown = rng.pct(25);
                            let kind = match v {
                                Some(v) => OpKind::Put { value: v.into() },
                                None => OpKind::Delete,
                            };
                            (kind, if unknown { None } else { complete })
                        }
                        _ => (
                            OpKind::Get {
                                result: v.map(String::from),
                            },
                            complete,
                        ),
                    };
                    Op {
                        id,
                        client: id,
                        key: "x".into(),
                        kind,
                        invoke,
                        complete,
                        revision: None,
                    }
                })
                .collect();
            let expected = brute_force(&ops);
            let w = check_wgl(&ops, &quick());
            let verdict = &w.keys["x"].verdict;
            if expected {
                yes += 1;
                assert_eq!(*verdict, Verdict::Linearizable, "{ops:#?}");
            } else {
                no += 1;
                assert!(
                    matches!(verdict, Verdict::NotLinearizable(_)),
                    "{verdict:?} {ops:#?}"
                );
            }
        }
        assert!(yes > 500 && no > 500, "{yes} {no}");
    }

    #[test]
    fn wgl_initial_values_are_used() {
        let ops = vec![get(0, 0, "x", Some("old"), (0, 10), 0)];
        assert!(check_wgl(&ops, &quick()).has_violation());
        let init = finals(&[("x", Some("old"))]);
        assert!(check_wgl_with_initial(&ops, &init, &quick()).is_linearizable());
    }
}
