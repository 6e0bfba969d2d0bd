//! Log forwarding: an agent sends its collected lines to a syslog receiver over TCP, UDP
//! and TLS and to an HTTP collector (all run by this test on 127.0.0.212), in order and
//! each line once, through a collector answering 503, a syslog receiver that goes away
//! and comes back, and an agent restart.

use crate::harness::{http_get, TestCa};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The receivers; the agent (and its instance) is on AGENT_IP, which no other test uses.
const IP: &str = "127.0.0.212";
const AGENT_IP: &str = "127.0.0.211";

type Got = Arc<Mutex<Vec<String>>>;

/// A receiver thread that stops (closing its sockets) when dropped.
struct Receiver {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn spawn(f: impl FnOnce(Arc<AtomicBool>) + Send + 'static) -> Receiver {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    Receiver {
        stop,
        thread: Some(std::thread::spawn(move || f(s))),
    }
}

/// Accepts connections until stopped; `serve` runs per connection (read timeout set).
fn accept_loop(
    listener: TcpListener,
    stop: Arc<AtomicBool>,
    serve: impl Fn(std::net::TcpStream, &AtomicBool) + Send + Sync + 'static,
) {
    listener.set_nonblocking(true).unwrap();
    let serve = Arc::new(serve);
    let mut conns = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(Duration::from_millis(100)))
                    .unwrap();
                let (serve, stop) = (serve.clone(), stop.clone());
                conns.push(std::thread::spawn(move || serve(s, &stop)));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    for c in conns {
        let _ = c.join();
    }
}

/// A read that hit the socket's read timeout (the loops check whether to stop).
fn timed_out(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// Reads exactly `buf.len()` bytes, waiting through read timeouts until stopped.
fn read_full(s: &mut impl Read, buf: &mut [u8], stop: &AtomicBool) -> bool {
    let mut at = 0;
    while at < buf.len() {
        match s.read(&mut buf[at..]) {
            Ok(0) => return false,
            Ok(n) => at += n,
            Err(e) if timed_out(&e) => {
                if stop.load(Ordering::SeqCst) {
                    return false;
                }
            }
            Err(_) => return false,
        }
    }
    true
}

/// Octet-counted syslog frames (`LEN SP MSG`) from one stream into `got`.
fn read_frames(s: &mut impl Read, got: &Got, stop: &AtomicBool) {
    loop {
        let mut len = Vec::new();
        let mut b = [0u8; 1];
        loop {
            if !read_full(s, &mut b, stop) {
                return;
            }
            if b[0] == b' ' {
                break;
            }
            assert!(
                b[0].is_ascii_digit() && len.len() < 8,
                "bad frame length byte {b:?}"
            );
            len.push(b[0]);
        }
        let n: usize = String::from_utf8(len).unwrap().parse().unwrap();
        let mut msg = vec![0u8; n];
        if !read_full(s, &mut msg, stop) {
            return;
        }
        got.lock().unwrap().push(String::from_utf8(msg).unwrap());
    }
}

fn syslog_tcp(listener: TcpListener, got: Got) -> Receiver {
    spawn(move |stop| {
        accept_loop(listener, stop, move |mut s, stop| {
            read_frames(&mut s, &got, stop)
        })
    })
}

fn syslog_tls(
    listener: TcpListener,
    got: Got,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Receiver {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let cfg = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap(),
    );
    spawn(move |stop| {
        accept_loop(listener, stop, move |s, stop| {
            let conn = rustls::ServerConnection::new(cfg.clone()).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, s);
            read_frames(&mut tls, &got, stop)
        })
    })
}

fn syslog_udp(socket: UdpSocket, got: Got) -> Receiver {
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    spawn(move |stop| {
        let mut buf = vec![0u8; 65536];
        while !stop.load(Ordering::SeqCst) {
            if let Ok(n) = socket.recv(&mut buf) {
                got.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
    })
}

/// An HTTP/1.1 collector: answers the first `fail_first` POSTs 503, then 200, and keeps
/// the NDJSON lines of accepted ones; every request must carry `Bearer <token>`.
fn collector(
    listener: TcpListener,
    got: Got,
    token: &'static str,
    fail_first: usize,
    seen: Arc<AtomicUsize>,
) -> Receiver {
    spawn(move |stop| {
        accept_loop(listener, stop, move |s, stop| {
            let mut w = s.try_clone().unwrap();
            let mut r = BufReader::new(s);
            loop {
                let mut head = Vec::new();
                loop {
                    let mut line = String::new();
                    match r.read_line(&mut line) {
                        Ok(0) => return,
                        Ok(_) => {}
                        Err(e) if timed_out(&e) => {
                            if stop.load(Ordering::SeqCst) {
                                return;
                            }
                            // A partial line is kept by read_line; go on reading it.
                            head.push(line);
                            continue;
                        }
                        Err(_) => return,
                    }
                    if line == "\r\n" {
                        break;
                    }
                    head.push(line);
                }
                let head = head.concat();
                assert!(head.starts_with("POST /ingest HTTP/1.1\r\n"), "{head}");
                let lower = head.to_lowercase();
                assert!(
                    lower.contains("content-type: application/x-ndjson"),
                    "{head}"
                );
                assert!(head.contains(&format!("Bearer {token}")), "{head}");
                let len: usize = lower
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .expect("a content-length")
                    .trim()
                    .parse()
                    .unwrap();
                let mut body = vec![0u8; len];
                if !read_full(&mut r, &mut body, stop) {
                    return;
                }
                let n = seen.fetch_add(1, Ordering::SeqCst) + 1;
                let answer = if n <= fail_first {
                    "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\nbusy"
                } else {
                    let text = String::from_utf8(body).unwrap();
                    got.lock().unwrap().extend(text.lines().map(str::to_string));
                    "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
                };
                if w.write_all(answer.as_bytes()).is_err() {
                    return;
                }
            }
        })
    })
}

/// The `sink-line-N` numbers in `got`, in arrival order.
fn numbers(got: &Got) -> Vec<u32> {
    got.lock()
        .unwrap()
        .iter()
        .filter_map(|m| {
            let at = m.find("sink-line-")?;
            m[at + 10..]
                .split_whitespace()
                .next()?
                .trim_end_matches('"')
                .parse()
                .ok()
        })
        .collect()
}

fn wait_for(what: &str, got: &Got, n: u32) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let have = numbers(got);
        if have.len() >= n as usize {
            return have;
        }
        assert!(Instant::now() < deadline, "{what}: only {have:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The first message received that contains `needle`.
fn first_with(got: &Got, needle: &str) -> String {
    let got = got.lock().unwrap();
    got.iter()
        .find(|m| m.contains(needle))
        .cloned()
        .unwrap_or_else(|| panic!("no message with {needle}: {got:?}"))
}

fn write_lines(file: &std::path::Path, range: std::ops::Range<u32>) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .unwrap();
    for i in range {
        writeln!(f, "sink-line-{i} payload").unwrap();
    }
}

#[test]
fn collected_lines_reach_syslog_and_http_sinks_in_order_once_through_outages() {
    let ip: std::net::IpAddr = IP.parse().unwrap();
    let tcp_listener = TcpListener::bind((ip, 0)).unwrap();
    let tcp_addr = tcp_listener.local_addr().unwrap();
    let tls_listener = TcpListener::bind((ip, 0)).unwrap();
    let tls_addr = tls_listener.local_addr().unwrap();
    let udp = UdpSocket::bind((ip, 0)).unwrap();
    let udp_addr = udp.local_addr().unwrap();
    let http_listener = TcpListener::bind((ip, 0)).unwrap();
    let http_addr = http_listener.local_addr().unwrap();

    let ca = TestCa::new();
    let (cert, key) = ca.issue("syslog", &[IP]);
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("sink.token");
    std::fs::write(&token_file, "s3cret-sink-token\n").unwrap();
    let log_dir = dir.path().join("echo-logs");
    std::fs::create_dir(&log_dir).unwrap();

    let (got_tcp, got_tls, got_udp, got_http): (Got, Got, Got, Got) = Default::default();
    let mut tcp = Some(syslog_tcp(tcp_listener, got_tcp.clone()));
    let _tls = syslog_tls(tls_listener, got_tls.clone(), &cert, &key);
    let _udp = syslog_udp(udp, got_udp.clone());
    let posts = Arc::new(AtomicUsize::new(0));
    let _http = collector(
        http_listener,
        got_http.clone(),
        "s3cret-sink-token",
        2,
        posts.clone(),
    );

    let (_control, api, token, _) = crate::harness::control(crate::harness::CONTROL_ONLY);
    let app = format!(
        "apiVersion: tessera.io/v1\nkind: App\nmetadata: {{name: echo}}\nspec: {{mode: vm, artifact: \"builtin:echo\", port: 9000, units: [rz00], logDir: \"{}\"}}\n",
        log_dir.display()
    );
    let estate = format!("{}---\n{app}", crate::harness::TOPOLOGY);
    let (code, _, body) =
        crate::harness::http(api, "POST", "/api/v1/apply", Some(&token), &estate).unwrap();
    assert_eq!(code, 200, "{body}");
    let sinks = format!(
        r#"
[[agent.log_sinks]]
name = "syslog-tcp"
url = "syslog+tcp://{tcp_addr}"
[[agent.log_sinks]]
name = "syslog-tls"
url = "syslog+tls://{tls_addr}"
ca_file = "{ca}"
[[agent.log_sinks]]
name = "syslog-udp"
url = "syslog+udp://{udp_addr}"
facility = "user"
[[agent.log_sinks]]
name = "collector"
url = "http://{http_addr}/ingest"
apps = ["echo"]
token_file = "{token_file}"
batch = 7
"#,
        ca = ca.ca_pem().display(),
        token_file = token_file.display(),
    );
    // Its instance stops with it (before the sink tables: keys after `[[agent.log_sinks]]`
    // would belong to the last sink), so the test leaves no process behind.
    let extra = format!("{}{sinks}", crate::harness::STOP_WORKLOADS);
    let mut agent = crate::harness::agent(api, &token, "host-a", "hz-a", AGENT_IP, &extra);

    // 40 lines: every sink gets them, in order, once; the collector's two 503s are retried.
    let app_log = log_dir.join("app.log");
    write_lines(&app_log, 0..40);
    let all: Vec<u32> = (0..40).collect();
    assert_eq!(wait_for("syslog over TCP", &got_tcp, 40), all);
    assert_eq!(wait_for("syslog over TLS", &got_tls, 40), all);
    assert_eq!(wait_for("syslog over UDP", &got_udp, 40), all);
    assert_eq!(wait_for("the HTTP collector", &got_http, 40), all);
    assert!(
        posts.load(Ordering::SeqCst) >= 2 + 40 / 7,
        "batches of at most 7"
    );

    // The messages are RFC 5424 with the line's origin.
    let first = first_with(&got_tcp, "sink-line-0 ");
    assert!(first.starts_with("<134>1 20"), "local0.info: {first}");
    let origin = format!(
        " host-a echo echo-rz00-0 file [tessera@32473 unit=\"rz00\" file=\"{}\" seq=\"",
        app_log.display()
    );
    assert!(first.contains(&origin), "{first}");
    assert!(first.ends_with("] sink-line-0 payload"), "{first}");
    let udp_first = first_with(&got_udp, "sink-line-0 ");
    assert!(udp_first.starts_with("<14>1 "), "user.info: {udp_first}");
    let rec: serde_json::Value =
        serde_json::from_str(&first_with(&got_http, "sink-line-0 ")).unwrap();
    assert_eq!(rec["app"], "echo");
    assert_eq!(rec["unit"], "rz00");
    assert_eq!(rec["node"], "host-a");

    // The TCP receiver goes away and comes back on the same port: nothing is lost.
    drop(tcp.take());
    std::thread::sleep(Duration::from_millis(300));
    write_lines(&app_log, 40..60);
    std::thread::sleep(Duration::from_secs(2));
    let listener = TcpListener::bind(tcp_addr).unwrap();
    tcp = Some(syslog_tcp(listener, got_tcp.clone()));
    let all: Vec<u32> = (0..60).collect();
    assert_eq!(
        wait_for("syslog over TCP after an outage", &got_tcp, 60),
        all
    );

    // A restarted agent goes on from each sink's cursor: nothing twice.
    agent.stop();
    write_lines(&app_log, 60..65);
    agent.start_again();
    let all: Vec<u32> = (0..65).collect();
    assert_eq!(
        wait_for("the collector after a restart", &got_http, 65),
        all
    );
    assert_eq!(
        wait_for("syslog over TCP after a restart", &got_tcp, 65),
        all
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(numbers(&got_http), all, "no duplicates");

    // The sinks' metrics.
    let admin: SocketAddr = agent.addr("agent", "api");
    let (_, _, metrics) = http_get(admin, "/metrics").unwrap();
    for line in [
        "tessera_agent_log_sink_lines_total{sink=\"collector\"}",
        "tessera_agent_log_sink_lag_lines{sink=\"syslog-tcp\"} 0",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    drop(tcp);
}
