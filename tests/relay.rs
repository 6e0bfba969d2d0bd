//! A TCP relay owned by the test harness, for partition tests (std threads only).
//!
//! `Relay::start(listen, target)` accepts connections on `listen` and forwards bytes both
//! ways to `target`, one connection to the target per accepted connection. Tessera nodes
//! bind their outgoing connections to their own loopback IP (127.0.0.11, 127.0.0.12, ...),
//! so a relay in front of a node's peer listener can partition it *by source IP*:
//!
//! * [`Relay::block`] cuts every relayed connection from that IP at once (both sockets
//!   shut down) and blackholes new ones: they are accepted but never connected to the
//!   target, nothing is sent back, data sent is discarded, so the peer sees timeouts
//!   rather than "connection refused" — like a partition. [`Relay::block_all`] does the
//!   same for every source.
//! * [`Relay::unblock`] / [`Relay::heal`] close the held blackholed connections (the peer
//!   sees them end and reconnects) and let new connections through again.
//!
//! Upstream connections leave from the kernel's choice of source (127.0.0.1 for a
//! loopback target: std cannot bind before connecting). Peers dialing through the relay
//! check the target's certificate against the IP they dial, so listen on the target
//! node's own IP (another port): a relay for 127.0.0.11's peer port listens on 127.0.0.11:0.
//!
//! Guarantees: a half-close is forwarded (EOF on one side shuts down writing on the
//! other), so a connection ends when both sides have closed, or at once on an error or a
//! block. Dropping the relay stops the listener (polled every few milliseconds), shuts
//! every connection down and waits a bounded time for its threads: nothing it started
//! outlives it for long or keeps the test binary alive. Counters ([`Relay::stats`]) are
//! for assertions and debugging.

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How often the accept loop looks for new connections and stop requests.
const ACCEPT_POLL: Duration = Duration::from_millis(5);
/// How often held (blackholed) connections are drained and checked for a closed peer.
const HELD_SWEEP: Duration = Duration::from_millis(50);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long drop waits for connection threads.
const DROP_WAIT: Duration = Duration::from_secs(3);

/// A snapshot of a relay's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Connections accepted, blocked or not.
    pub accepted: u64,
    /// Connections relayed to the target (its connect succeeded).
    pub forwarded: u64,
    /// Connections accepted while their source was blocked, and held silently.
    pub blackholed: u64,
    /// Relayed connections cut by `block` / `block_all`.
    pub killed: u64,
    /// Connections dropped because the target refused or did not answer.
    pub connect_failures: u64,
    pub bytes_to_target: u64,
    pub bytes_from_target: u64,
    /// Relayed connections open now.
    pub active: usize,
    /// Blackholed connections held now.
    pub held: usize,
}

/// See the module docs. Dropping it stops everything.
pub struct Relay {
    shared: Arc<Shared>,
    addr: SocketAddr,
    accept: Option<JoinHandle<()>>,
}

struct Shared {
    target: SocketAddr,
    stop: AtomicBool,
    state: Mutex<State>,
    accepted: AtomicU64,
    forwarded: AtomicU64,
    blackholed: AtomicU64,
    killed: AtomicU64,
    connect_failures: AtomicU64,
    bytes_to_target: AtomicU64,
    bytes_from_target: AtomicU64,
}

#[derive(Default)]
struct State {
    blocked: HashSet<IpAddr>,
    all: bool,
    next_id: u64,
    conns: HashMap<u64, Arc<Conn>>,
    held: Vec<(IpAddr, TcpStream)>,
    threads: Vec<JoinHandle<()>>,
}

impl State {
    fn is_blocked(&self, ip: IpAddr) -> bool {
        self.all || self.blocked.contains(&ip)
    }
}

/// One relayed connection; `client` and `upstream` are handles kept for shutting down.
struct Conn {
    src: IpAddr,
    client: TcpStream,
    upstream: Mutex<Option<TcpStream>>,
    dead: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Conn {
    /// Shuts both sockets down; true if it was alive.
    fn kill(&self) -> bool {
        let was_alive = !self.dead.swap(true, SeqCst);
        let _ = self.client.shutdown(Shutdown::Both);
        if let Some(u) = lock(&self.upstream).as_ref() {
            let _ = u.shutdown(Shutdown::Both);
        }
        was_alive
    }
}

impl Relay {
    /// Starts relaying `listen` (port 0 picks one: see [`Relay::addr`]) to `target`.
    /// Panics if `listen` cannot be bound.
    pub fn start(listen: SocketAddr, target: SocketAddr) -> Relay {
        Relay::try_start(listen, target)
            .unwrap_or_else(|e| panic!("relay: cannot listen on {listen}: {e}"))
    }

    pub fn try_start(listen: SocketAddr, target: SocketAddr) -> io::Result<Relay> {
        let listener = TcpListener::bind(listen)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            target,
            stop: AtomicBool::new(false),
            state: Mutex::new(State::default()),
            accepted: AtomicU64::new(0),
            forwarded: AtomicU64::new(0),
            blackholed: AtomicU64::new(0),
            killed: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            bytes_to_target: AtomicU64::new(0),
            bytes_from_target: AtomicU64::new(0),
        });
        let s = shared.clone();
        let accept = thread::Builder::new()
            .name(format!("relay-{addr}"))
            .spawn(move || s.accept_loop(listener))?;
        Ok(Relay {
            shared,
            addr,
            accept: Some(accept),
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn target(&self) -> SocketAddr {
        self.shared.target
    }

    /// Partitions `ip` away: cuts its relayed connections now, blackholes new ones.
    pub fn block(&self, ip: IpAddr) {
        let mut st = self.shared.lock();
        st.blocked.insert(ip);
        self.shared.cut(&st, |src| src == ip);
    }

    /// Lets `ip` through again (unless `block_all` is in force); its held connections
    /// are closed.
    pub fn unblock(&self, ip: IpAddr) {
        let mut st = self.shared.lock();
        st.blocked.remove(&ip);
        release_held(&mut st);
    }

    /// Isolates the target from everyone.
    pub fn block_all(&self) {
        let mut st = self.shared.lock();
        st.all = true;
        self.shared.cut(&st, |_| true);
    }

    /// Lifts every block; held connections are closed.
    pub fn heal(&self) {
        let mut st = self.shared.lock();
        st.blocked.clear();
        st.all = false;
        release_held(&mut st);
    }

    pub fn is_blocked(&self, ip: IpAddr) -> bool {
        self.shared.lock().is_blocked(ip)
    }

    pub fn stats(&self) -> RelayStats {
        let s = &self.shared;
        let st = s.lock();
        RelayStats {
            accepted: s.accepted.load(SeqCst),
            forwarded: s.forwarded.load(SeqCst),
            blackholed: s.blackholed.load(SeqCst),
            killed: s.killed.load(SeqCst),
            connect_failures: s.connect_failures.load(SeqCst),
            bytes_to_target: s.bytes_to_target.load(SeqCst),
            bytes_from_target: s.bytes_from_target.load(SeqCst),
            active: st.conns.len(),
            held: st.held.len(),
        }
    }
}

/// Closes held connections whose source is no longer blocked.
fn release_held(st: &mut State) {
    let held = std::mem::take(&mut st.held);
    for (src, s) in held {
        if st.is_blocked(src) {
            st.held.push((src, s));
        } else {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shared.stop.store(true, SeqCst);
        if let Some(h) = self.accept.take() {
            let _ = h.join(); // the loop polls `stop` every ACCEPT_POLL
        }
        let threads = {
            let mut st = self.shared.lock();
            for c in st.conns.values() {
                c.kill();
            }
            for (_, s) in st.held.drain(..) {
                let _ = s.shutdown(Shutdown::Both);
            }
            std::mem::take(&mut st.threads)
        };
        let deadline = Instant::now() + DROP_WAIT;
        for h in threads {
            while !h.is_finished() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(2));
            }
            if h.is_finished() {
                let _ = h.join();
            }
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Kills the relayed connections whose source matches.
    fn cut(&self, st: &State, matches: impl Fn(IpAddr) -> bool) {
        for c in st.conns.values().filter(|c| matches(c.src)) {
            if c.kill() {
                self.killed.fetch_add(1, SeqCst);
            }
        }
    }

    fn accept_loop(self: Arc<Self>, listener: TcpListener) {
        let mut last_sweep = Instant::now();
        while !self.stop.load(SeqCst) {
            match listener.accept() {
                Ok((stream, peer)) => self.admit(stream, peer.ip()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // WouldBlock, or a transient failure (e.g. out of descriptors): wait.
                Err(_) => thread::sleep(ACCEPT_POLL),
            }
            if last_sweep.elapsed() >= HELD_SWEEP {
                last_sweep = Instant::now();
                self.sweep_held();
            }
        }
    }

    fn admit(self: &Arc<Self>, stream: TcpStream, src: IpAddr) {
        self.accepted.fetch_add(1, SeqCst);
        let mut st = self.lock();
        if st.is_blocked(src) {
            // Nonblocking, so the sweep can drain it without waiting.
            let _ = stream.set_nonblocking(true);
            self.blackholed.fetch_add(1, SeqCst);
            st.held.push((src, stream));
            return;
        }
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_nodelay(true);
        let Ok(reader) = stream.try_clone() else {
            let _ = stream.shutdown(Shutdown::Both);
            return;
        };
        let id = st.next_id;
        st.next_id += 1;
        let conn = Arc::new(Conn {
            src,
            client: stream,
            upstream: Mutex::new(None),
            dead: AtomicBool::new(false),
        });
        st.conns.insert(id, conn.clone());
        let shared = self.clone();
        let c = conn.clone();
        match thread::Builder::new()
            .name("relay-conn".into())
            .spawn(move || shared.run(id, c, reader))
        {
            Ok(h) => {
                st.threads.retain(|h| !h.is_finished());
                st.threads.push(h);
            }
            Err(_) => {
                conn.kill();
                st.conns.remove(&id);
            }
        }
    }

    /// Drains held connections (a partition drops what is sent) and closes those whose
    /// peer has gone, so a reconnecting peer cannot pile up descriptors.
    fn sweep_held(&self) {
        let mut st = self.lock();
        let mut buf = [0u8; 4096];
        st.held.retain_mut(|(_, s)| {
            for _ in 0..16 {
                match s.read(&mut buf) {
                    Ok(0) => return false,
                    Ok(_) => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => return false,
                }
            }
            true
        });
    }

    /// One relayed connection: connect to the target, pump both ways, clean up.
    fn run(self: Arc<Self>, id: u64, conn: Arc<Conn>, client_reader: TcpStream) {
        self.relay(&conn, client_reader);
        conn.kill();
        self.lock().conns.remove(&id);
    }

    fn relay(self: &Arc<Self>, conn: &Arc<Conn>, client_reader: TcpStream) {
        let upstream = match TcpStream::connect_timeout(&self.target, CONNECT_TIMEOUT) {
            Ok(u) => u,
            Err(_) => {
                self.connect_failures.fetch_add(1, SeqCst);
                return;
            }
        };
        let _ = upstream.set_nodelay(true);
        let (Ok(up_reader), Ok(up_handle), Ok(client_writer)) = (
            upstream.try_clone(),
            upstream.try_clone(),
            conn.client.try_clone(),
        ) else {
            return;
        };
        *lock(&conn.upstream) = Some(up_handle);
        // A block (or drop) that ran while connecting saw no upstream to shut: recheck.
        if conn.dead.load(SeqCst) || self.stop.load(SeqCst) || self.lock().is_blocked(conn.src) {
            return;
        }
        self.forwarded.fetch_add(1, SeqCst);
        let (shared, c) = (self.clone(), conn.clone());
        let back = thread::Builder::new()
            .name("relay-back".into())
            .spawn(move || {
                if !pump(up_reader, client_writer, &shared.bytes_from_target) {
                    c.kill();
                }
            });
        let Ok(back) = back else { return };
        if !pump(client_reader, upstream, &self.bytes_to_target) {
            conn.kill();
        }
        let _ = back.join();
    }
}

/// Copies `from` to `to` until EOF (then shuts down writing on `to`: the half-close is
/// forwarded) or an error. Returns whether it ended with a clean EOF.
fn pump(mut from: TcpStream, mut to: TcpStream, bytes: &AtomicU64) -> bool {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) => {
                let _ = to.shutdown(Shutdown::Write);
                return true;
            }
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    return false;
                }
                bytes.fetch_add(n as u64, SeqCst);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));

    /// An echo server on 127.0.0.1:0: echoes until EOF, then closes.
    struct Echo {
        addr: SocketAddr,
        stop: Arc<AtomicBool>,
        thread: Option<JoinHandle<()>>,
    }

    impl Echo {
        fn start() -> Echo {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.set_nonblocking(true).unwrap();
            let addr = listener.local_addr().unwrap();
            let stop = Arc::new(AtomicBool::new(false));
            let s = stop.clone();
            let thread = thread::spawn(move || {
                while !s.load(SeqCst) {
                    let Ok((mut c, _)) = listener.accept() else {
                        thread::sleep(Duration::from_millis(2));
                        continue;
                    };
                    thread::spawn(move || {
                        let _ = c.set_nonblocking(false);
                        let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                        let mut buf = [0u8; 8192];
                        while let Ok(n @ 1..) = c.read(&mut buf) {
                            if c.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = c.shutdown(Shutdown::Both);
                    });
                }
            });
            Echo {
                addr,
                stop,
                thread: Some(thread),
            }
        }
    }

    impl Drop for Echo {
        fn drop(&mut self) {
            self.stop.store(true, SeqCst);
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    fn connect(addr: SocketAddr) -> TcpStream {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s
    }

    fn roundtrip(s: &mut TcpStream, msg: &[u8]) -> io::Result<Vec<u8>> {
        s.write_all(msg)?;
        let mut back = vec![0u8; msg.len()];
        s.read_exact(&mut back)?;
        Ok(back)
    }

    /// The connection ends promptly (EOF or reset), rather than staying silent.
    fn ends_promptly(s: &mut TcpStream) -> bool {
        let started = Instant::now();
        let mut buf = [0u8; 64];
        loop {
            match s.read(&mut buf) {
                Ok(0) => return started.elapsed() < Duration::from_secs(1),
                Ok(_) => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return false
                }
                Err(_) => return started.elapsed() < Duration::from_secs(1),
            }
        }
    }

    /// Sends a ping and gets nothing back: the read times out.
    fn is_silent(s: &mut TcpStream) -> bool {
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        if s.write_all(b"ping").is_err() {
            return false;
        }
        let mut buf = [0u8; 8];
        let silent = matches!(
            s.read(&mut buf),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
        );
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        silent
    }

    fn wait_until(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(1);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            thread::sleep(Duration::from_millis(5));
        }
    }

    fn relay_to(echo: &Echo) -> Relay {
        Relay::start("127.0.0.1:0".parse().unwrap(), echo.addr)
    }

    #[test]
    fn forwards_both_ways_with_half_close() {
        let echo = Echo::start();
        let relay = relay_to(&echo);
        assert_eq!(relay.target(), echo.addr);
        let mut c = connect(relay.addr());
        assert_eq!(roundtrip(&mut c, b"hello").unwrap(), b"hello");
        // A larger payload, written while reading.
        let data: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
        let mut w = c.try_clone().unwrap();
        let sent = data.clone();
        let writer = thread::spawn(move || w.write_all(&sent).unwrap());
        let mut back = vec![0u8; data.len()];
        c.read_exact(&mut back).unwrap();
        writer.join().unwrap();
        assert!(back == data);
        // Half-close: the echo server sees EOF and ends the connection after echoing.
        c.write_all(b"bye").unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, b"bye");
        let total = data.len() as u64 + 8;
        wait_until("counters", || {
            let s = relay.stats();
            s.bytes_to_target == total && s.bytes_from_target == total && s.active == 0
        });
        let s = relay.stats();
        assert_eq!(
            (s.accepted, s.forwarded, s.blackholed, s.killed),
            (1, 1, 0, 0),
            "{s:?}"
        );
    }

    #[test]
    fn block_cuts_existing_blackholes_new_and_unblock_restores() {
        let echo = Echo::start();
        let relay = relay_to(&echo);
        let mut c1 = connect(relay.addr());
        assert_eq!(roundtrip(&mut c1, b"one").unwrap(), b"one");

        relay.block(LOCAL);
        assert!(relay.is_blocked(LOCAL));
        assert!(ends_promptly(&mut c1), "existing connection was not cut");
        assert_eq!(relay.stats().killed, 1);

        let mut c2 = connect(relay.addr()); // accepted...
        assert!(is_silent(&mut c2), "blocked connection got an answer");
        let s = relay.stats();
        assert_eq!(
            (s.accepted, s.forwarded, s.blackholed, s.held),
            (2, 1, 1, 1),
            "{s:?}"
        );

        relay.unblock(LOCAL);
        assert!(!relay.is_blocked(LOCAL));
        assert!(
            ends_promptly(&mut c2),
            "held connection was not closed on unblock"
        );
        let mut c3 = connect(relay.addr());
        assert_eq!(roundtrip(&mut c3, b"three").unwrap(), b"three");
        assert_eq!(relay.stats().held, 0);
    }

    #[test]
    fn other_sources_pass_and_block_all_isolates() {
        let echo = Echo::start();
        let relay = relay_to(&echo);
        let other: IpAddr = "127.0.0.9".parse().unwrap();
        relay.block(other);
        let mut c1 = connect(relay.addr());
        assert_eq!(roundtrip(&mut c1, b"a").unwrap(), b"a");

        relay.block_all();
        assert!(relay.is_blocked(LOCAL));
        assert!(ends_promptly(&mut c1));
        let mut c2 = connect(relay.addr());
        assert!(is_silent(&mut c2));
        // Unblocking one IP does not lift block_all.
        relay.unblock(LOCAL);
        assert!(is_silent(&mut c2));

        relay.heal();
        assert!(!relay.is_blocked(other));
        assert!(ends_promptly(&mut c2));
        let mut c3 = connect(relay.addr());
        assert_eq!(roundtrip(&mut c3, b"b").unwrap(), b"b");
    }

    #[test]
    fn held_connections_closed_by_peer_are_released() {
        let echo = Echo::start();
        let relay = relay_to(&echo);
        relay.block_all();
        for _ in 0..5 {
            let mut c = connect(relay.addr());
            c.write_all(b"request nobody reads").unwrap();
        }
        wait_until("held connections released", || {
            let s = relay.stats();
            s.blackholed == 5 && s.held == 0
        });
    }

    #[test]
    fn drop_closes_everything_promptly() {
        let echo = Echo::start();
        let relay = relay_to(&echo);
        let addr = relay.addr();
        let mut c1 = connect(addr);
        assert_eq!(roundtrip(&mut c1, b"x").unwrap(), b"x");
        let held_relay = relay_to(&echo);
        held_relay.block_all();
        let mut c2 = connect(held_relay.addr());
        wait_until("held", || held_relay.stats().held == 1);

        let started = Instant::now();
        drop(relay);
        drop(held_relay);
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
        assert!(ends_promptly(&mut c1));
        assert!(ends_promptly(&mut c2));
        assert!(TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err());
    }

    #[test]
    fn unreachable_target_closes_the_client() {
        let dead = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let relay = Relay::start("127.0.0.1:0".parse().unwrap(), dead);
        let mut c = connect(relay.addr());
        assert!(ends_promptly(&mut c));
        wait_until("connect failure", || relay.stats().connect_failures == 1);
        assert_eq!(relay.stats().forwarded, 0);
    }
}
