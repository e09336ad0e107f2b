//! A scripted fake Kubernetes API server for end-to-end tests (test support).
//!
//! No Kubernetes server can run here, so tests point kube-rs at this server on 127.0.0.1.
//! It replays a scenario from `fixtures/k8s/<scenario>/scenario.json` (format documented in
//! `fixtures/k8s/README.md`): per resource path, an ordered list of steps (list, watch, error
//! window), plus fixed objects answered to plain GETs. Timestamps in the fixture files are
//! placeholders (`{{t}}`, `{{t+N}}`, `{{t-N}}`) rendered relative to the scenario's time origin
//! `t0`, and watch lines are sent at `t0 + offset` on the wall clock.
//!
//! HTTP/1.1 over std `TcpListener`, one thread per connection, every response with
//! `Connection: close` (hyper reconnects for the next request). Lists and errors carry a
//! `Content-Length`; watches are `Transfer-Encoding: chunked`, the response head is sent at
//! once and each event line is one chunk, flushed when due.

use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::support::rfc3339;

/// A running fake API server; stops (and closes every open watch) when dropped.
pub struct FakeKubeApi {
    /// `http://127.0.0.1:PORT`, to give to `kube::Config::new`.
    pub url: String,
    /// The scenario's time origin, whole Unix seconds.
    pub t0_secs: i64,
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

struct Shared {
    t0: i64,
    resources: HashMap<String, Vec<Step>>,
    objects: HashMap<String, String>,
    step_names: HashSet<String>,
    state: Mutex<State>,
    /// Notified on every state change (step served, stop requested).
    changed: Condvar,
}

#[derive(Default)]
struct State {
    stopped: bool,
    requests: Vec<String>,
    unscripted: Vec<String>,
    cursors: HashMap<String, usize>,
    served: HashSet<String>,
    skipped: HashSet<String>,
    connections: Vec<JoinHandle<()>>,
}

struct Step {
    name: String,
    kind: StepKind,
}

enum StepKind {
    List {
        body: String,
    },
    Watch {
        /// (seconds after t0, compact JSON event without the newline)
        lines: Vec<(f64, String)>,
        end: End,
        end_at: Option<f64>,
    },
    Error {
        status: u16,
        body: String,
        until: f64,
    },
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum End {
    Close,
    Drop,
    Hold,
}

enum Action<'a> {
    Respond(u16, String),
    Step(&'a Step),
    Idle,
}

impl FakeKubeApi {
    /// Serves fixtures/k8s/<scenario>/scenario.json. `t0_secs` is the scenario's time origin in
    /// whole Unix seconds: placeholders are rendered relative to it and watch lines are emitted
    /// at t0 + their offset (wall clock). Panics on any malformed scenario or fixture file.
    pub fn start(scenario_dir: &Path, t0_secs: i64) -> FakeKubeApi {
        let (resources, objects, step_names) = load_scenario(scenario_dir, t0_secs);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind fake kube api");
        let addr = listener.local_addr().expect("local addr");
        let shared = Arc::new(Shared {
            t0: t0_secs,
            resources,
            objects,
            step_names,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        let acceptor = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("fake-kube-accept".into())
                .spawn(move || accept_loop(listener, shared))
                .expect("spawn acceptor")
        };
        FakeKubeApi {
            url: format!("http://{addr}"),
            t0_secs,
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// Every request served so far, in order, as "GET /api/v1/pods?watch=true&...".
    pub fn requests(&self) -> Vec<String> {
        self.shared.lock().requests.clone()
    }

    /// Requests the scenario did not script, answered by a fallback: a list when the path's
    /// next step is a watch (or the reverse) or when no steps are left (500), a watch when no
    /// steps are left (held open, idle), an unknown path (404), a method other than GET (405).
    pub fn unscripted(&self) -> Vec<String> {
        self.shared.lock().unscripted.clone()
    }

    /// Blocks until the step with this name has been served (a list answered, a watch fully
    /// streamed including its end action, or for "hold" its last line sent; an error step once
    /// it has answered a request), panics after `timeout`, on an unknown name, or when the step
    /// was skipped (an error window that passed without any request).
    pub fn wait_for_step(&self, name: &str, timeout: Duration) {
        assert!(
            self.shared.step_names.contains(name),
            "fake kube api: no step named {name:?} in the scenario"
        );
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.lock();
        loop {
            if st.served.contains(name) {
                return;
            }
            assert!(
                !st.skipped.contains(name),
                "fake kube api: step {name:?} was skipped (no request during its window); requests: {:#?}",
                st.requests
            );
            let now = Instant::now();
            if now >= deadline {
                panic!(
                    "fake kube api: step {name:?} not served within {timeout:?}; requests so far: {:#?}",
                    st.requests
                );
            }
            st = self
                .shared
                .changed
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

impl Drop for FakeKubeApi {
    fn drop(&mut self) {
        self.shared.lock().stopped = true;
        self.shared.changed.notify_all();
        // Wake the blocking accept().
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        let connections = std::mem::take(&mut self.shared.lock().connections);
        for c in connections {
            let _ = c.join();
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.lock());
        self.changed.notify_all();
    }

    /// Waits until wall clock t0 + `at`; false if the server is stopping.
    fn wait_until(&self, at: f64) -> bool {
        let deadline = self.t0 as f64 + at;
        let mut st = self.lock();
        loop {
            if st.stopped {
                return false;
            }
            let now = unix_now();
            if now >= deadline {
                return true;
            }
            st = self
                .changed
                .wait_timeout(st, Duration::from_secs_f64(deadline - now))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn wait_stopped(&self) {
        let mut st = self.lock();
        while !st.stopped {
            st = self.changed.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

// ------------------------------------------------------------------ connections

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for conn in listener.incoming() {
        let mut st = shared.lock();
        if st.stopped {
            return;
        }
        st.connections.retain(|h| !h.is_finished());
        let Ok(stream) = conn else { continue };
        let worker = shared.clone();
        let handle = std::thread::Builder::new()
            .name("fake-kube-conn".into())
            .spawn(move || {
                let mut stream = stream;
                handle_connection(&worker, &mut stream);
                let _ = stream.shutdown(Shutdown::Both);
            })
            .expect("spawn connection thread");
        st.connections.push(handle);
    }
}

fn handle_connection(shared: &Shared, stream: &mut TcpStream) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
    let Some((method, target)) = read_request(shared, stream) else {
        return;
    };
    let line = format!("{method} {target}");
    shared.update(|st| st.requests.push(line.clone()));
    let (path, query) = target.split_once('?').unwrap_or((target.as_str(), ""));
    let is_watch = query
        .split('&')
        .any(|kv| kv == "watch=true" || kv == "watch=1");

    let action = if method != "GET" {
        shared.update(|st| st.unscripted.push(line.clone()));
        Action::Respond(
            405,
            status_body(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
            ),
        )
    } else if let Some(steps) = shared.resources.get(path) {
        next_action(shared, path, steps, is_watch, &line)
    } else if let Some(body) = shared.objects.get(path) {
        Action::Respond(200, body.clone())
    } else {
        shared.update(|st| st.unscripted.push(line.clone()));
        Action::Respond(
            404,
            status_body(
                404,
                "NotFound",
                &format!("the server could not find the requested resource (get {path})"),
            ),
        )
    };

    match action {
        Action::Respond(code, body) => {
            let _ = write_response(stream, code, &body);
        }
        Action::Step(step) => match &step.kind {
            StepKind::List { body } => {
                if write_response(stream, 200, body).is_ok() {
                    shared.update(|st| {
                        st.served.insert(step.name.clone());
                    });
                }
            }
            StepKind::Watch { lines, end, end_at } => {
                stream_watch(shared, stream, &step.name, lines, *end, *end_at)
            }
            StepKind::Error { .. } => unreachable!("error steps answer with Respond"),
        },
        Action::Idle => {
            if write_watch_head(stream).is_ok() {
                shared.wait_stopped();
            }
        }
    }
}

/// Picks the answer for a request to a scripted resource path, consuming the step it uses.
fn next_action<'a>(
    shared: &Shared,
    path: &str,
    steps: &'a [Step],
    is_watch: bool,
    line: &str,
) -> Action<'a> {
    let mut st = shared.lock();
    let action = loop {
        let i = st.cursors.get(path).copied().unwrap_or(0);
        let Some(step) = steps.get(i) else {
            st.unscripted.push(line.to_string());
            break if is_watch {
                Action::Idle
            } else {
                Action::Respond(
                    500,
                    status_body(
                        500,
                        "InternalError",
                        &format!("fake kube api: no steps left for {path}"),
                    ),
                )
            };
        };
        match &step.kind {
            StepKind::Error {
                status,
                body,
                until,
            } => {
                if unix_now() < shared.t0 as f64 + until {
                    st.served.insert(step.name.clone());
                    break Action::Respond(*status, body.clone());
                }
                if !st.served.contains(&step.name) {
                    st.skipped.insert(step.name.clone());
                }
                st.cursors.insert(path.to_string(), i + 1);
            }
            StepKind::List { .. } | StepKind::Watch { .. } => {
                let wants_watch = matches!(step.kind, StepKind::Watch { .. });
                if wants_watch != is_watch {
                    st.unscripted.push(line.to_string());
                    let (want, got) = if wants_watch {
                        ("watch", "list")
                    } else {
                        ("list", "watch")
                    };
                    break Action::Respond(
                        500,
                        status_body(
                            500,
                            "InternalError",
                            &format!(
                                "fake kube api: got a {got} request for {path}, but the next step {:?} is a {want}",
                                step.name
                            ),
                        ),
                    );
                }
                st.cursors.insert(path.to_string(), i + 1);
                break Action::Step(step);
            }
        }
    };
    drop(st);
    shared.changed.notify_all();
    action
}

fn stream_watch(
    shared: &Shared,
    stream: &mut TcpStream,
    name: &str,
    lines: &[(f64, String)],
    end: End,
    end_at: Option<f64>,
) {
    if write_watch_head(stream).is_err() {
        return;
    }
    for (at, line) in lines {
        if !shared.wait_until(*at) {
            return;
        }
        let chunk = format!("{:x}\r\n{line}\n\r\n", line.len() + 1);
        if stream
            .write_all(chunk.as_bytes())
            .and_then(|_| stream.flush())
            .is_err()
        {
            return;
        }
    }
    if let Some(at) = end_at
        && !shared.wait_until(at)
    {
        return;
    }
    match end {
        End::Close => {
            if stream
                .write_all(b"0\r\n\r\n")
                .and_then(|_| stream.flush())
                .is_err()
            {
                return;
            }
            let _ = stream.shutdown(Shutdown::Both);
        }
        End::Drop => {
            // No terminating chunk: the body is cut off mid-stream.
            let _ = stream.shutdown(Shutdown::Both);
        }
        End::Hold => {}
    }
    shared.update(|st| {
        st.served.insert(name.to_string());
    });
    if end == End::Hold {
        shared.wait_stopped();
    }
}

/// Reads one request head; returns (method, target). Gives up when the server stops, on EOF,
/// after 10 s without a complete head, or on a head over 64 KiB.
fn read_request(shared: &Shared, stream: &mut TcpStream) -> Option<(String, String)> {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let started = Instant::now();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos;
        }
        if shared.lock().stopped || started.elapsed() > Duration::from_secs(10) || buf.len() > 65536
        {
            return None;
        }
        match stream.read(&mut chunk) {
            Ok(0) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut parts = lines.next()?.split(' ');
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    // Drain a request body, if any, so closing the socket does not reset the connection.
    let content_length = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let mut have = buf.len() - (head_end + 4);
    while have < content_length.min(1 << 20) && started.elapsed() < Duration::from_secs(10) {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => have += n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    Some((method, target))
}

fn reason_phrase(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        410 => "Gone",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

fn write_response(stream: &mut TcpStream, code: u16, body: &str) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {code} {}\r\nCache-Control: no-cache, private\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reason_phrase(code),
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    stream.flush()
}

fn write_watch_head(stream: &mut TcpStream) -> io::Result<()> {
    stream.write_all(
        b"HTTP/1.1 200 OK\r\nCache-Control: no-cache, private\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
    )?;
    stream.flush()
}

/// A `Status` body as the API server sends it (compact, trailing newline).
fn status_body(code: u16, reason: &str, message: &str) -> String {
    let v = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    });
    format!("{v}\n")
}

// ------------------------------------------------------------------ scenario loading

type Loaded = (
    HashMap<String, Vec<Step>>,
    HashMap<String, String>,
    HashSet<String>,
);

fn load_scenario(dir: &Path, t0: i64) -> Loaded {
    let scenario_path = dir.join("scenario.json");
    let text = std::fs::read_to_string(&scenario_path)
        .unwrap_or_else(|e| panic!("read {}: {e}", scenario_path.display()));
    let doc: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("parse {}: {e}", scenario_path.display()));
    let ctx = |what: &str| format!("{}: {what}", scenario_path.display());
    let top = doc
        .as_object()
        .unwrap_or_else(|| panic!("{}", ctx("not an object")));
    for key in top.keys() {
        assert!(
            key == "resources" || key == "objects",
            "{}",
            ctx(&format!("unknown top-level key {key:?}"))
        );
    }

    let mut resources = HashMap::new();
    let mut names = HashSet::new();
    if let Some(res) = doc.get("resources") {
        let res = res
            .as_object()
            .unwrap_or_else(|| panic!("{}", ctx("\"resources\" is not an object")));
        for (path, steps) in res {
            assert!(
                path.starts_with('/'),
                "{}",
                ctx(&format!("path {path:?} must start with /"))
            );
            let steps = steps
                .as_array()
                .unwrap_or_else(|| panic!("{}", ctx(&format!("steps of {path} are not an array"))));
            let mut loaded = Vec::new();
            for step in steps {
                let step = load_step(dir, t0, step, &ctx(path));
                assert!(
                    names.insert(step.name.clone()),
                    "{}",
                    ctx(&format!("duplicate step name {:?}", step.name))
                );
                loaded.push(step);
            }
            resources.insert(path.clone(), loaded);
        }
    }

    let mut objects = HashMap::new();
    if let Some(objs) = doc.get("objects") {
        let objs = objs
            .as_object()
            .unwrap_or_else(|| panic!("{}", ctx("\"objects\" is not an object")));
        for (path, file) in objs {
            let file = file.as_str().unwrap_or_else(|| {
                panic!("{}", ctx(&format!("object {path}: file is not a string")))
            });
            assert!(
                !resources.contains_key(path),
                "{}",
                ctx(&format!("{path} is both a resource and an object"))
            );
            let body = load_json_file(dir, file, t0);
            objects.insert(path.clone(), body);
        }
    }
    (resources, objects, names)
}

fn load_step(dir: &Path, t0: i64, step: &Value, ctx: &str) -> Step {
    let obj = step
        .as_object()
        .unwrap_or_else(|| panic!("{ctx}: a step is not an object"));
    let get_str = |k: &str| -> Option<String> {
        obj.get(k).map(|v| {
            v.as_str()
                .unwrap_or_else(|| panic!("{ctx}: step field {k:?} is not a string"))
                .to_string()
        })
    };
    let get_f64 = |k: &str| -> Option<f64> {
        obj.get(k).map(|v| {
            v.as_f64()
                .unwrap_or_else(|| panic!("{ctx}: step field {k:?} is not a number"))
        })
    };
    let name = get_str("name").unwrap_or_else(|| panic!("{ctx}: step without \"name\""));
    let ctx = format!("{ctx} step {name:?}");
    let kind = get_str("kind").unwrap_or_else(|| panic!("{ctx}: no \"kind\""));
    let allowed: &[&str] = match kind.as_str() {
        "list" => &["name", "kind", "file"],
        "watch" => &["name", "kind", "file", "end", "end_at"],
        "error" => &["name", "kind", "status", "until", "reason", "message"],
        other => panic!("{ctx}: unknown kind {other:?} (list, watch, error)"),
    };
    for key in obj.keys() {
        assert!(
            allowed.contains(&key.as_str()),
            "{ctx}: unknown field {key:?} for a {kind} step"
        );
    }
    let kind = match kind.as_str() {
        "list" => {
            let file = get_str("file").unwrap_or_else(|| panic!("{ctx}: no \"file\""));
            let body = load_json_file(dir, &file, t0);
            let v: Value = serde_json::from_str(&body).expect("validated");
            let rv = v
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str);
            assert!(
                rv.is_some_and(|rv| !rv.is_empty()),
                "{ctx}: {file} has no metadata.resourceVersion (kube-rs needs one on a list)"
            );
            StepKind::List { body }
        }
        "watch" => {
            let file = get_str("file").unwrap_or_else(|| panic!("{ctx}: no \"file\""));
            let end = match get_str("end")
                .unwrap_or_else(|| panic!("{ctx}: no \"end\" (close, drop or hold)"))
                .as_str()
            {
                "close" => End::Close,
                "drop" => End::Drop,
                "hold" => End::Hold,
                other => panic!("{ctx}: unknown end {other:?} (close, drop or hold)"),
            };
            let lines = load_watch_file(dir, &file, t0);
            let end_at = get_f64("end_at");
            if let (Some(end_at), Some((last, _))) = (end_at, lines.last()) {
                assert!(
                    end_at >= *last,
                    "{ctx}: end_at {end_at} is before the last line ({last})"
                );
            }
            StepKind::Watch { lines, end, end_at }
        }
        _ => {
            let status = obj
                .get("status")
                .and_then(Value::as_u64)
                .unwrap_or_else(|| panic!("{ctx}: no numeric \"status\""));
            assert!(
                (400..600).contains(&status),
                "{ctx}: status {status} is not an HTTP error"
            );
            let status = status as u16;
            let until = get_f64("until").unwrap_or_else(|| panic!("{ctx}: no \"until\""));
            let (reason, message) = match status {
                400 => ("BadRequest", "bad request"),
                401 => ("Unauthorized", "Unauthorized"),
                403 => ("Forbidden", "forbidden"),
                404 => (
                    "NotFound",
                    "the server could not find the requested resource",
                ),
                409 => ("Conflict", "conflict"),
                410 => ("Expired", "too old resource version"),
                429 => (
                    "TooManyRequests",
                    "the server has received too many requests and has asked us to try again later",
                ),
                500 => (
                    "InternalError",
                    "Internal error occurred: etcdserver: request timed out",
                ),
                503 => (
                    "ServiceUnavailable",
                    "the server is currently unable to handle the request",
                ),
                504 => (
                    "Timeout",
                    "the server was unable to return a response in the time allotted",
                ),
                _ => ("", ""),
            };
            let reason = get_str("reason").unwrap_or_else(|| reason.to_string());
            assert!(
                !reason.is_empty(),
                "{ctx}: give a \"reason\" for status {status}"
            );
            let message = get_str("message").unwrap_or_else(|| message.to_string());
            StepKind::Error {
                status,
                body: status_body(status, &reason, &message),
                until,
            }
        }
    };
    Step { name, kind }
}

/// Reads a JSON file, renders its placeholders and checks it still parses.
fn load_json_file(dir: &Path, file: &str, t0: i64) -> String {
    let path = dir.join(file);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let body = render(&text, t0).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    if let Err(e) = serde_json::from_str::<Value>(&body) {
        panic!("{}: not JSON after rendering: {e}", path.display());
    }
    body
}

/// Reads a watch file: one `AT<TAB>JSON` per line (blank lines ignored).
fn load_watch_file(dir: &Path, file: &str, t0: i64) -> Vec<(f64, String)> {
    let path = dir.join(file);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let mut lines = Vec::new();
    let mut last = f64::NEG_INFINITY;
    for (n, raw) in text.lines().enumerate() {
        let ctx = format!("{}:{}", path.display(), n + 1);
        if raw.trim().is_empty() {
            continue;
        }
        let (at, event) = raw
            .split_once('\t')
            .unwrap_or_else(|| panic!("{ctx}: expected AT<TAB>JSON"));
        let at: f64 = at
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{ctx}: bad offset {at:?}"));
        assert!(at.is_finite(), "{ctx}: bad offset {at}");
        assert!(
            at >= last,
            "{ctx}: offset {at} is before the previous line's {last}"
        );
        last = at;
        let event = render(event.trim_end(), t0).unwrap_or_else(|e| panic!("{ctx}: {e}"));
        let v: Value =
            serde_json::from_str(&event).unwrap_or_else(|e| panic!("{ctx}: not JSON: {e}"));
        check_event(&v).unwrap_or_else(|e| panic!("{ctx}: {e}"));
        lines.push((at, event));
    }
    lines
}

/// The checks kube-rs would otherwise turn into confusing errors (see notes/kube_watch_api.md).
fn check_event(v: &Value) -> Result<(), String> {
    let ty = v.get("type").and_then(Value::as_str).ok_or("no \"type\"")?;
    let obj = v.get("object").ok_or("no \"object\"")?;
    let rv = obj
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .unwrap_or("");
    match ty {
        "ADDED" | "MODIFIED" | "DELETED" | "BOOKMARK" => {
            if rv.is_empty() {
                return Err(format!("{ty} object without metadata.resourceVersion"));
            }
            if ty == "BOOKMARK" && (obj.get("kind").is_none() || obj.get("apiVersion").is_none()) {
                return Err("BOOKMARK object without kind/apiVersion".into());
            }
        }
        "ERROR" => {
            if obj.get("code").and_then(Value::as_u64).is_none() {
                return Err("ERROR Status without \"code\"".into());
            }
        }
        other => return Err(format!("unknown event type {other:?}")),
    }
    Ok(())
}

/// Replaces `{{t}}`, `{{t+N}}`, `{{t-N}}` with RFC 3339 UTC at second precision.
fn render(template: &str, t0: i64) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or("unterminated {{ placeholder")?;
        let expr = after[..end].trim();
        out.push_str(&rfc3339(placeholder_secs(expr, t0)?));
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

fn placeholder_secs(expr: &str, t0: i64) -> Result<i64, String> {
    let bad = || format!("bad placeholder {{{{{expr}}}}} (use t, t+N or t-N)");
    let expr: String = expr.chars().filter(|c| !c.is_whitespace()).collect();
    let offset = if expr == "t" {
        0.0
    } else if let Some(n) = expr.strip_prefix("t+") {
        n.parse::<f64>().map_err(|_| bad())?
    } else if let Some(n) = expr.strip_prefix("t-") {
        -n.parse::<f64>().map_err(|_| bad())?
    } else {
        return Err(bad());
    };
    if !offset.is_finite() || expr[2.min(expr.len())..].starts_with(['+', '-']) {
        return Err(bad());
    }
    // Kubernetes `Time` has second precision: drop the fraction (towards the past).
    Ok((t0 as f64 + offset).floor() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_render_to_second_precision() {
        // 2026-11-25T10:00:00Z
        let t0 = 1_795_600_800;
        assert_eq!(rfc3339(t0), "2026-11-25T10:00:00Z");
        let r = |s: &str| render(s, t0).unwrap();
        assert_eq!(r("{{t}}"), "2026-11-25T10:00:00Z");
        assert_eq!(
            r("\"{{t+3}}\",\"{{t-300}}\""),
            "\"2026-11-25T10:00:03Z\",\"2026-11-25T09:55:00Z\""
        );
        assert_eq!(r("{{t+3.9}}"), "2026-11-25T10:00:03Z");
        assert_eq!(r("{{t-0.5}}"), "2026-11-25T09:59:59Z");
        assert_eq!(r("{{ t + 86400 }}"), "2026-11-26T10:00:00Z");
        assert_eq!(r("no placeholders"), "no placeholders");
        for bad in ["{{x}}", "{{t*2}}", "{{t+}}", "{{t+-1}}", "{{t", "{{t+inf}}"] {
            assert!(render(bad, t0).is_err(), "{bad} should be rejected");
        }
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59Z");
    }
}
