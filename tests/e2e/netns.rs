//! A real Kubernetes-like node on one machine, made of network namespaces: a "pod" namespace
//! behind a "node" namespace that forwards and masquerades (iptables MASQUERADE, as kube-proxy
//! and CNI plugins do) its traffic towards an "ext" namespace, the outside world.
//!
//! ```text
//!  pod ns                node ns                                  ext ns
//!  eth0 pod_ip ──veth── vpod .1 | vext node_ext_ip ──veth── eth0 (ext_if) ext_ip
//!                        ip_forward=1
//!                        POSTROUTING -s pod_ip/30 -o vext -j MASQUERADE
//!                        (TCP and UDP: --to-ports SNAT_PORTS)
//! ```
//!
//! Needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN), iproute2, iptables and python3; only the
//! namespaces created here are configured, never the host's interfaces or firewall. IPv6 is
//! disabled inside the namespaces so captures hold only the test's own IPv4 traffic.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A real Kubernetes-like node on one machine: a "pod" namespace behind a "node" namespace
/// that masquerades its traffic towards an "ext" namespace (the outside world). Dropped = torn
/// down (processes still running in the namespaces are killed).
#[derive(Debug)]
pub struct SnatNode {
    /// Namespace names (under /run/netns).
    pub pod: String,
    pub node: String,
    pub ext: String,
    /// The pod's address (the original source of its connections).
    pub pod_ip: Ipv4Addr,
    /// The node's outside address: the SNAT target the ext side sees.
    pub node_ext_ip: Ipv4Addr,
    /// The outside peer's address.
    pub ext_ip: Ipv4Addr,
    /// The ext namespace's interface name, for capture (tcpdump/softflowd inside `ext`).
    pub ext_if: String,
}

/// Interface names inside the namespaces (per-namespace, so they never collide).
const POD_IF: &str = "eth0";
const NODE_POD_IF: &str = "vpod";
const NODE_EXT_IF: &str = "vext";
const EXT_IF: &str = "eth0";

/// The node-side ports MASQUERADE maps pod connections to. They lie below Linux's ephemeral
/// range (32768-60999) the pod's sockets use, so an outside port never equals its pod port and
/// a test can tell whether a flow was really mapped back.
pub const SNAT_PORTS: std::ops::RangeInclusive<u16> = 20000..=29999;

static SEQ: AtomicU32 = AtomicU32::new(0);

fn find_tool(name: &str) -> Option<PathBuf> {
    for dir in ["/usr/sbin", "/usr/bin", "/sbin", "/bin"] {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return Some(p);
        }
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}

/// Fails (never skips) when a tool is missing: `make test` installs them.
fn tool(name: &str) -> PathBuf {
    find_tool(name).unwrap_or_else(|| {
        panic!("{name} is not installed; run `make test` (it installs the test dependencies)")
    })
}

/// Runs a command and panics with its output when it fails.
fn run(program: &str, args: &[&str]) -> Output {
    let output = Command::new(tool(program))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program} {args:?}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// UDP echo + TCP "read, answer, close" server on 0.0.0.0:PORT; prints `ready` once bound.
const SERVER_PY: &str = r#"
import selectors, socket, sys
port = int(sys.argv[1])
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
udp.bind(("0.0.0.0", port))
tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
tcp.bind(("0.0.0.0", port))
tcp.listen(64)
sel = selectors.DefaultSelector()
sel.register(udp, selectors.EVENT_READ)
sel.register(tcp, selectors.EVENT_READ)
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        if key.fileobj is udp:
            data, peer = udp.recvfrom(65535)
            udp.sendto(data, peer)
        else:
            conn, _ = tcp.accept()
            conn.settimeout(5)
            try:
                data = conn.recv(65535)
                conn.sendall(b"echo:" + data)
            except OSError:
                pass
            finally:
                conn.close()
"#;

/// Sends N UDP datagrams (each from its own socket, all kept open so every source port is
/// distinct) and one TCP exchange; waits for each answer; prints `PROTO PORT` per flow.
const CLIENT_PY: &str = r#"
import socket, sys
dst, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
socks = []
for i in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(3)
    s.bind(("0.0.0.0", 0))
    payload = b"hawking udp %d" % i
    for attempt in range(3):
        s.sendto(payload, (dst, port))
        try:
            data, _ = s.recvfrom(65535)
            break
        except socket.timeout:
            continue
    else:
        sys.exit("no UDP echo for datagram %d" % i)
    if data != payload:
        sys.exit("wrong UDP echo %r" % data)
    socks.append(s)
    print("17 %d" % s.getsockname()[1], flush=True)
t = socket.create_connection((dst, port), timeout=5)
t.sendall(b"hawking tcp")
t.shutdown(socket.SHUT_WR)
answer = b""
while True:
    chunk = t.recv(65535)
    if not chunk:
        break
    answer += chunk
if answer != b"echo:hawking tcp":
    sys.exit("wrong TCP answer %r" % answer)
print("6 %d" % t.getsockname()[1], flush=True)
t.close()
for s in socks:
    s.close()
"#;

impl SnatNode {
    /// Creates the three namespaces, the two veth pairs, the pod's default route, forwarding
    /// and the MASQUERADE rules. Names are unique per process, `tag` and call; addresses come
    /// from 10.201.0.0/16 with the pid folded in. Panics with a clear message when not
    /// permitted (needs root).
    pub fn create(tag: &str) -> SnatNode {
        for needed in ["ip", "iptables", "python3"] {
            tool(needed);
        }
        let pid = std::process::id();
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let name = |role: &str| format!("hk-{tag}-{pid}-{seq}-{role}");
        // Two /30s: pod link 10.201.A.B+0/30 (node .1, pod .2), ext link .4/30 (node .5, ext .6).
        let slot = pid.wrapping_mul(8).wrapping_add(seq.wrapping_mul(8));
        let (a, b) = ((slot / 256 % 250) as u8, (slot % 256) as u8);
        let ip = |host: u8| Ipv4Addr::new(10, 201, a, b + host);

        // Built before any configuration so a failure half-way still tears everything down.
        let mut node = SnatNode {
            pod: String::new(),
            node: String::new(),
            ext: String::new(),
            pod_ip: ip(2),
            node_ext_ip: ip(5),
            ext_ip: ip(6),
            ext_if: EXT_IF.to_string(),
        };
        let node_pod_ip = ip(1);
        for (role, i) in [("pod", 0), ("node", 1), ("ext", 2)] {
            let ns = name(role);
            let _ = Command::new(tool("ip"))
                .args(["netns", "del", &ns])
                .output(); // stale
            let out = Command::new(tool("ip"))
                .args(["netns", "add", &ns])
                .output()
                .unwrap_or_else(|e| panic!("running `ip netns add`: {e}"));
            assert!(
                out.status.success(),
                "SnatNode needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN) to create network \
                 namespaces; `ip netns add {ns}` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            match i {
                0 => node.pod = ns,
                1 => node.node = ns,
                _ => node.ext = ns,
            }
        }

        let (pod, nd, ext) = (node.pod.clone(), node.node.clone(), node.ext.clone());
        // Command lines without spaces inside arguments, split on whitespace.
        let ip_cmd = |line: String| run("ip", &line.split_whitespace().collect::<Vec<_>>());
        let ns_cmd = |ns: &str, line: String| {
            node.exec_ok(ns, &line.split_whitespace().collect::<Vec<_>>());
        };
        for ns in [&pod, &nd, &ext] {
            ns_cmd(ns, "sysctl -qw net.ipv6.conf.all.disable_ipv6=1".into());
            ns_cmd(ns, "sysctl -qw net.ipv6.conf.default.disable_ipv6=1".into());
            ip_cmd(format!("-n {ns} link set lo up"));
        }
        ip_cmd(format!(
            "-n {nd} link add {NODE_POD_IF} type veth peer name {POD_IF} netns {pod}"
        ));
        ip_cmd(format!(
            "-n {nd} link add {NODE_EXT_IF} type veth peer name {EXT_IF} netns {ext}"
        ));
        for (ns, dev, addr) in [
            (&nd, NODE_POD_IF, node_pod_ip),
            (&nd, NODE_EXT_IF, node.node_ext_ip),
            (&pod, POD_IF, node.pod_ip),
            (&ext, EXT_IF, node.ext_ip),
        ] {
            ip_cmd(format!("-n {ns} addr add {addr}/30 dev {dev}"));
            ip_cmd(format!("-n {ns} link set {dev} up"));
        }
        ip_cmd(format!("-n {pod} route add default via {node_pod_ip}"));
        ns_cmd(&nd, "sysctl -qw net.ipv4.ip_forward=1".into());
        // TCP and UDP to SNAT_PORTS (--to-ports needs a protocol), anything else plain.
        let pod_net = format!("{}/30", node.pod_ip);
        let ports = format!("{}-{}", SNAT_PORTS.start(), SNAT_PORTS.end());
        for rule in [
            format!("-p tcp -j MASQUERADE --to-ports {ports}"),
            format!("-p udp -j MASQUERADE --to-ports {ports}"),
            "-j MASQUERADE".to_string(),
        ] {
            ns_cmd(
                &nd,
                format!("iptables -t nat -A POSTROUTING -s {pod_net} -o {NODE_EXT_IF} {rule}"),
            );
        }
        node
    }

    /// The namespace's bind mount, e.g. for `ConntrackEvents::subscribe`.
    pub fn netns_path(&self, ns: &str) -> PathBuf {
        Path::new("/run/netns").join(ns)
    }

    /// Runs `args` inside namespace `ns` (`ip netns exec`) and returns its output, whatever
    /// its exit status.
    pub fn exec(&self, ns: &str, args: &[&str]) -> Output {
        Command::new(tool("ip"))
            .args(["netns", "exec", ns])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("ip netns exec {ns} {args:?}: {e}"))
    }

    /// Like [`exec`](Self::exec), panicking with the output when the command fails.
    pub fn exec_ok(&self, ns: &str, args: &[&str]) -> Output {
        let output = self.exec(ns, args);
        assert!(
            output.status.success(),
            "ip netns exec {ns} {args:?} failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    /// Starts `args` inside namespace `ns`, stdout and stderr piped. The caller waits for or
    /// kills it; anything still running at drop is killed with the namespaces.
    pub fn spawn(&self, ns: &str, args: &[&str]) -> Child {
        Command::new(tool("ip"))
            .args(["netns", "exec", ns])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning ip netns exec {ns} {args:?}: {e}"))
    }

    /// Starts a UDP echo server and a TCP server in ext on `port` (python3), sends `n` UDP
    /// datagrams and opens one TCP connection with a little payload from the pod namespace to
    /// ext:port, each from a fresh source port, and returns the pod-side `(protocol, source
    /// port)` of every flow: the `n` UDP ones (17) in order, then the TCP one (6). Every
    /// datagram is answered and the TCP connection is closed before this returns.
    pub fn pod_talks_to_ext(&self, port: u16, n: usize) -> Vec<(u8, u16)> {
        let mut server = ServerGuard(self.spawn(
            &self.ext,
            &["python3", "-u", "-c", SERVER_PY, &port.to_string()],
        ));
        let stdout = server.0.stdout.take().expect("server stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(line) if line.trim() == "ready" => {}
            other => {
                let _ = server.0.kill();
                let mut stderr = String::new();
                if let Some(mut e) = server.0.stderr.take() {
                    let _ = e.read_to_string(&mut stderr);
                }
                panic!(
                    "the echo server in {} did not start on port {port} ({other:?}): {stderr}",
                    self.ext
                );
            }
        }

        let started = Instant::now();
        let out = self.exec(
            &self.pod,
            &[
                "python3",
                "-c",
                CLIENT_PY,
                &self.ext_ip.to_string(),
                &port.to_string(),
                &n.to_string(),
            ],
        );
        assert!(
            out.status.success(),
            "pod → {}:{port} traffic failed after {:?} ({}):\n{}{}",
            self.ext_ip,
            started.elapsed(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let flows: Vec<(u8, u16)> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|line| {
                let (proto, port) = line
                    .split_once(' ')
                    .unwrap_or_else(|| panic!("client said {line:?}"));
                (proto.parse().unwrap(), port.parse().unwrap())
            })
            .collect();
        assert_eq!(flows.len(), n + 1, "client output: {flows:?}");
        flows
    }
}

/// Kills (by pid) and reaps the server when `pod_talks_to_ext` returns or panics.
struct ServerGuard(Child);

impl Drop for ServerGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for SnatNode {
    fn drop(&mut self) {
        // Never panics here (a panic while unwinding would abort the test binary).
        let ip = find_tool("ip").unwrap_or_else(|| PathBuf::from("ip"));
        for ns in [&self.pod, &self.node, &self.ext] {
            if ns.is_empty() {
                continue;
            }
            // Processes left in our namespaces would keep them alive: stop them by pid.
            if let Ok(out) = Command::new(&ip).args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    if let Ok(pid) = pid.parse::<libc::pid_t>() {
                        // SAFETY: kill(2) on a pid that lives in a namespace this fixture made.
                        unsafe {
                            libc::kill(pid, libc::SIGKILL);
                        }
                    }
                }
            }
            let _ = Command::new(&ip).args(["netns", "del", ns]).output();
        }
    }
}
