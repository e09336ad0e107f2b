//! Test harness: real processes on loopback. `hawking serve` runs as a child process on
//! ephemeral ports; Debian's softflowd, nfcapd and nfdump are the independent exporter and
//! second opinion. Everything started here is stopped when its guard drops.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn hawking_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hawking"))
}

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// Fails (never skips) when a tool the test needs is missing: `make test` installs them.
pub fn require_tool(name: &str) {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|p| p.join(name).is_file()))
        .unwrap_or(false)
        || Path::new("/usr/sbin").join(name).is_file();
    assert!(
        found,
        "{name} is not installed; run `make test` (it installs the test dependencies)"
    );
}

fn tool_path(name: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/sbin", "/bin"] {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    PathBuf::from(name)
}

fn signal(child: &Child, sig: libc::c_int) {
    unsafe {
        libc::kill(child.id() as libc::pid_t, sig);
    }
}

fn wait_timeout(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Where a test's store lives, as `hawking` commands are pointed at it: a local directory
/// (any path), or a bucket of the test's S3 server (`crate::garage::S3Store`).
pub trait StoreArg {
    /// The `--data` argument.
    fn location(&self) -> std::ffi::OsString;
    /// What the commands need in their environment to reach the store.
    fn env(&self) -> Vec<(String, String)> {
        Vec::new()
    }
    /// A local directory of the test's for `hawking serve`'s state when the store is not
    /// local (`--local-dir`); `None` for a local store, which keeps its own.
    fn local_dir(&self) -> Option<PathBuf> {
        None
    }
    /// Where `hawking serve`'s logs go: beside the store.
    fn log_dir(&self) -> PathBuf;
}

impl<P: AsRef<Path> + ?Sized> StoreArg for P {
    fn location(&self) -> std::ffi::OsString {
        self.as_ref().as_os_str().to_owned()
    }

    fn log_dir(&self) -> PathBuf {
        self.as_ref()
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
    }
}

/// A `hawking` command over the store at `data`.
pub fn hawking_over(data: &(impl StoreArg + ?Sized), args: &[&str]) -> Command {
    let mut command = Command::new(hawking_bin());
    command
        .args(args)
        .arg("--data")
        .arg(data.location())
        .envs(data.env());
    command
}

/// A running `hawking serve`: the one harness every end-to-end test starts it with.
pub struct Hawking {
    child: Option<Child>,
    pub netflow: SocketAddr,
    /// The IPFIX/TCP listener, when started with `--listen-tcp`.
    pub netflow_tcp: Option<SocketAddr>,
    pub metrics: SocketAddr,
    /// The PostgreSQL-wire endpoint, when started with `--pg` (and users in `--config`).
    pg: Option<SocketAddr>,
    stdout: Option<BufReader<std::process::ChildStdout>>,
    /// Where the process logs (stderr), read when something fails.
    log: PathBuf,
}

/// What `hawking serve` reported when it stopped.
#[derive(Debug)]
pub struct StopReport {
    pub flows: u64,
    pub rows_committed: u64,
}

/// Longest a test waits for a metric to reach a value.
const METRIC_WAIT: Duration = Duration::from_secs(30);

impl Hawking {
    /// Starts `hawking serve` on ephemeral loopback ports with its store at `data`, a 0.5 s
    /// flush interval unless `extra` sets one, and `extra`'s flags.
    pub fn start(data: &(impl StoreArg + ?Sized), extra: &[&str]) -> Hawking {
        Self::try_start(data, extra, &[])
            .unwrap_or_else(|e| panic!("hawking serve did not start: {e}"))
    }

    /// As `start`, with `env` set; a server that does not come up gives its error output.
    pub fn try_start(
        data: &(impl StoreArg + ?Sized),
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Hawking, String> {
        static RUN: AtomicU64 = AtomicU64::new(0);
        let log = data.log_dir().join(format!(
            "hawking-serve-{}.log",
            RUN.fetch_add(1, Ordering::Relaxed)
        ));
        let mut command = hawking_over(
            data,
            &[
                "serve",
                "--netflow",
                "127.0.0.1:0",
                "--metrics",
                "127.0.0.1:0",
            ],
        );
        if let Some(local) = data.local_dir() {
            command.arg("--local-dir").arg(local);
        }
        let mut child = command
            .args(if extra.contains(&"--flush-interval") {
                &[][..]
            } else {
                &["--flush-interval", "0.5"][..]
            })
            .args(extra)
            .envs(env.iter().copied())
            .env("HAWKING_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("create log file"))
            .spawn()
            .expect("spawn hawking serve");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read start-up line");
        if !line.starts_with("hawking serving") {
            let _ = child.wait();
            let err = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(format!("{line:?}\n{err}"));
        }
        let field = |key: &str| -> String {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(&format!("{key}=")).map(str::to_string))
                .unwrap_or_else(|| panic!("no {key} in {line:?}"))
        };
        Ok(Hawking {
            // An enricher listens for no exporter (`netflow=off`): nothing may be sent to it.
            netflow: field("netflow")
                .parse()
                .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
            netflow_tcp: field("netflow_tcp").parse().ok(),
            metrics: field("metrics").parse().unwrap(),
            pg: field("pg").parse().ok(),
            child: Some(child),
            stdout: Some(stdout),
            log,
        })
    }

    /// The PostgreSQL-wire endpoint's address (the test started it with `--pg`).
    pub fn pg(&self) -> SocketAddr {
        self.pg.expect("hawking serve was started without --pg")
    }

    /// SIGTERM, then waits for a clean exit and returns the final report.
    pub fn stop(mut self) -> StopReport {
        let mut child = self.child.take().unwrap();
        signal(&child, libc::SIGTERM);
        let status = wait_timeout(&mut child, Duration::from_secs(30))
            .expect("hawking did not stop within 30 s");
        let mut out = String::new();
        self.stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        let stderr = std::fs::read_to_string(&self.log).unwrap_or_default();
        assert!(
            status.success(),
            "hawking exited with {status}\nstdout: {out}\nstderr: {stderr}"
        );
        let line = out
            .lines()
            .find(|l| l.starts_with("hawking stopped"))
            .unwrap_or_else(|| panic!("no stop line in {out:?}"));
        let num = |key: &str| -> u64 {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {key} in {line:?}"))
        };
        StopReport {
            flows: num("flows"),
            rows_committed: num("rows_committed"),
        }
    }

    /// SIGSTOP: the process is frozen where it stands (until killed).
    pub fn pause(&self) {
        signal(self.child.as_ref().unwrap(), libc::SIGSTOP);
    }

    /// SIGKILL: the process dies where it stands, no shutdown path runs.
    pub fn kill(mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, libc::SIGKILL);
            let _ = child.wait();
        }
    }

    /// The Prometheus exposition text.
    pub fn metrics_text(&self) -> String {
        http_get(self.metrics, "/metrics")
    }

    /// Sum of a metric's samples whose labels contain every `label=value` given.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_sum(&self.metrics_text(), name, labels)
    }

    /// Waits until `metric` is exactly `value`.
    pub fn wait_metric_eq(&self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.wait_for(name, labels, |v| v == value, &format!("exactly {value}"));
    }

    /// Waits until `metric` reaches at least `value` (flows are decoded asynchronously).
    pub fn wait_metric(&self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.wait_for(name, labels, |v| v >= value, &format!("at least {value}"));
    }

    fn wait_for(&self, name: &str, labels: &[(&str, &str)], ok: impl Fn(f64) -> bool, want: &str) {
        let start = Instant::now();
        loop {
            let v = self.metric(name, labels);
            if ok(v) {
                return;
            }
            assert!(
                start.elapsed() < METRIC_WAIT,
                "{name}{labels:?} stayed at {v}, wanted {want}\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Hawking {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect metrics");
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

/// Runs `hawking sql --format json` and returns the rows.
pub fn sql(data: &(impl StoreArg + ?Sized), query: &str) -> Vec<serde_json::Map<String, Value>> {
    let out = hawking_over(data, &["sql", "--format", "json"])
        .arg(query)
        .output()
        .expect("run hawking sql");
    assert!(
        out.status.success(),
        "hawking sql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    if text.trim().is_empty() {
        return Vec::new();
    }
    let rows: Vec<Value> = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("bad JSON from hawking sql: {e}: {text}"));
    rows.into_iter()
        .map(|r| r.as_object().unwrap().clone())
        .collect()
}

pub fn sql_i64(data: &(impl StoreArg + ?Sized), query: &str) -> i64 {
    let rows = sql(data, query);
    let v = rows
        .first()
        .and_then(|r| r.values().next())
        .cloned()
        .unwrap_or(Value::Null);
    v.as_i64()
        .unwrap_or_else(|| panic!("{query} returned {v:?}"))
}

/// A UDP port nothing listens on right now.
pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Debian's nfcapd collecting into `dir`.
pub struct Nfcapd {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub dir: PathBuf,
}

impl Nfcapd {
    pub fn start(dir: &Path) -> Nfcapd {
        require_tool("nfcapd");
        std::fs::create_dir_all(dir).unwrap();
        let port = free_udp_port();
        let child = Command::new(tool_path("nfcapd"))
            .args(["-w"])
            .arg(dir)
            .args(["-b", "127.0.0.1", "-p", &port.to_string(), "-B", "16000000"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nfcapd");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        // nfcapd binds asynchronously: wait until the port is taken.
        let start = Instant::now();
        while UdpSocket::bind(addr).is_ok() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "nfcapd did not bind {addr}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Nfcapd {
            child: Some(child),
            addr,
            dir: dir.to_path_buf(),
        }
    }

    /// Stops nfcapd (which writes its file) and returns every flow nfdump reads back.
    pub fn stop_and_dump(mut self) -> Vec<serde_json::Map<String, Value>> {
        let mut child = self.child.take().unwrap();
        signal(&child, libc::SIGTERM);
        wait_timeout(&mut child, Duration::from_secs(10)).expect("nfcapd did not stop");
        let out = Command::new(tool_path("nfdump"))
            .arg("-R")
            .arg(&self.dir)
            .args(["-o", "json"])
            .env("TZ", "UTC")
            .output()
            .expect("run nfdump");
        assert!(
            out.status.success(),
            "nfdump failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        if text.trim().is_empty() || text.contains("No matching flows") {
            return Vec::new();
        }
        let rows: Vec<Value> =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("nfdump JSON: {e}"));
        rows.into_iter()
            .filter_map(|r| r.as_object().cloned())
            .filter(|r| r.get("type").and_then(Value::as_str) == Some("FLOW"))
            .collect()
    }
}

impl Drop for Nfcapd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Forwards every datagram it receives to all targets, so two collectors get an identical
/// export (softflowd sends to one destination).
pub struct UdpTee {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    forwarded: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl UdpTee {
    pub fn start(targets: Vec<SocketAddr>) -> UdpTee {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        unsafe {
            let size: libc::c_int = 16 << 20;
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&socket),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                &size as *const _ as *const libc::c_void,
                4,
            );
        }
        let addr = socket.local_addr().unwrap();
        let out = UdpSocket::bind("127.0.0.1:0").unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let forwarded = Arc::new(AtomicU64::new(0));
        let (stop2, fwd2) = (stop.clone(), forwarded.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !stop2.load(Ordering::Relaxed) {
                if let Ok((n, _)) = socket.recv_from(&mut buf) {
                    for t in &targets {
                        out.send_to(&buf[..n], t).unwrap();
                    }
                    fwd2.fetch_add(1, Ordering::Relaxed);
                    // Pace like a network would: nfcapd reads one datagram per syscall.
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        });
        UdpTee {
            addr,
            stop,
            forwarded,
            thread: Some(thread),
        }
    }

    /// Waits until no datagram arrived for `quiet`, then stops; returns datagrams forwarded.
    pub fn finish(mut self, quiet: Duration) -> u64 {
        let mut last = self.forwarded.load(Ordering::Relaxed);
        let mut since = Instant::now();
        while since.elapsed() < quiet {
            std::thread::sleep(Duration::from_millis(50));
            let now = self.forwarded.load(Ordering::Relaxed);
            if now != last {
                last = now;
                since = Instant::now();
            }
        }
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        last
    }
}

/// Runs softflowd over a pcap, exporting with NetFlow `version` (5, 9 or 10) to `to`.
/// `-a` stamps exports with the capture's clock, so relative times decode to capture times.
pub fn softflowd_export(pcap: &Path, version: u8, to: SocketAddr, extra: &[&str], tmp: &Path) {
    require_tool("softflowd");
    // softflowd 1.1.0 blocks forever at pcap EOF when its control socket path is longer than
    // 12 characters (measured here), so the socket gets a short unique name in /tmp.
    static RUN: AtomicU64 = AtomicU64::new(0);
    let n = (std::process::id() as u64 * 64 + RUN.fetch_add(1, Ordering::Relaxed)) & 0xfffff;
    let ctl = PathBuf::from(format!("/tmp/h{n:05x}"));
    let out = Command::new(tool_path("softflowd"))
        .arg("-r")
        .arg(pcap)
        .args([
            "-n",
            &to.to_string(),
            "-v",
            &version.to_string(),
            "-a",
            "-d",
        ])
        .arg("-p")
        .arg(tmp.join(format!("softflowd-{version}.pid")))
        .arg("-c")
        .arg(&ctl)
        .args(extra)
        .output()
        .expect("run softflowd");
    let _ = std::fs::remove_file(&ctl);
    assert!(
        out.status.success(),
        "softflowd failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Sends `flows` from `exporter` as IPFIX (templates in every datagram, 100 flows each, the
/// exporter's clock at this second), paced so loopback drops nothing.
pub fn send_ipfix(to: SocketAddr, exporter: &str, flows: &[hawking_schemas::flow::FlowRecord]) {
    use hawking_collector::decode::netflow::wire::Version;
    use hawking_collector::export::{ExporterClock, PacketBuilder, TimeEncoding, flow_template};
    let now_ms = hawking_schemas::time::now_micros() / 1000;
    let clock = ExporterClock {
        boot_ms: now_ms / 1000 * 1000 - 3_600_000,
        export_ms: now_ms / 1000 * 1000,
    };
    let socket = exporter_socket(exporter);
    let template = flow_template(400, false, TimeEncoding::Milliseconds);
    for (seq, chunk) in flows.chunks(100).enumerate() {
        let mut p = PacketBuilder::new(Version::Ipfix, clock, (seq * 100) as u32, 0);
        p.template(&template).flows(&template, clock, chunk);
        socket.send_to(&p.finish(), to).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A sender with a fixed source address and port (an exporter, as collectors see it).
pub fn exporter_socket(ip: &str) -> UdpSocket {
    UdpSocket::bind(format!("{ip}:0")).expect("bind exporter socket")
}

/// A TCP/UDP 5-tuple: source, destination, source port, destination port, protocol.
pub type FiveTuple = (String, String, u16, u16, u8);

/// First and last packet time (µs) of every TCP/UDP 5-tuple in a classic pcap of Ethernet
/// frames: the ground truth an exporter's flow times should reproduce.
pub fn pcap_flow_times(path: &Path) -> std::collections::HashMap<FiveTuple, (i64, i64)> {
    use std::net::{Ipv4Addr, Ipv6Addr};
    let data = std::fs::read(path).unwrap();
    assert_eq!(
        &data[..4],
        &0xa1b2c3d4u32.to_le_bytes(),
        "microsecond little-endian pcap expected"
    );
    let mut flows = std::collections::HashMap::new();
    let mut at = 24;
    while at + 16 <= data.len() {
        let le = |o: usize| u32::from_le_bytes(data[o..o + 4].try_into().unwrap()) as i64;
        let ts = le(at) * 1_000_000 + le(at + 4);
        let caplen = le(at + 8) as usize;
        let frame = &data[at + 16..at + 16 + caplen];
        at += 16 + caplen;
        let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
        let ip = &frame[14..];
        let (src, dst, proto, l4) = match ethertype {
            0x0800 => {
                let ihl = (ip[0] & 0x0f) as usize * 4;
                let a = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]).to_string();
                let b = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]).to_string();
                (a, b, ip[9], &ip[ihl..])
            }
            0x86dd => {
                let a = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[8..24]).unwrap()).to_string();
                let b = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[24..40]).unwrap()).to_string();
                (a, b, ip[6], &ip[40..])
            }
            _ => continue,
        };
        if proto != 6 && proto != 17 {
            continue;
        }
        let sp = u16::from_be_bytes([l4[0], l4[1]]);
        let dp = u16::from_be_bytes([l4[2], l4[3]]);
        let e = flows.entry((src, dst, sp, dp, proto)).or_insert((ts, ts));
        e.0 = e.0.min(ts);
        e.1 = e.1.max(ts);
    }
    flows
}

/// Unix seconds as RFC 3339 UTC (`2026-11-20T10:00:00Z`), as Kubernetes writes times.
pub fn rfc3339(secs: i64) -> String {
    k8s_openapi::jiff::Timestamp::from_second(secs)
        .expect("time in range")
        .to_string()
}

/// `hawking whois IP --at AT --json` over the store at `data`.
pub fn whois_json(data: &(impl StoreArg + ?Sized), ip: &str, at: &str) -> serde_json::Value {
    let out = hawking_over(data, &["whois", ip, "--json", "--at", at])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "whois {ip} at {at}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Starts `command` with its stderr read line by line, and SIGKILLs it as soon as it prints
/// a line containing `marker` (`what` names that event when the command ends first).
pub fn kill_after_line(command: &mut Command, marker: &str, what: &str) {
    let mut child = command.stderr(Stdio::piped()).spawn().unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "the command ended before {what}"
        );
        if line.contains(marker) {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
}
