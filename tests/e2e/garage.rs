//! A real S3-compatible server for the tests that put the store in a bucket: Garage
//! (`cargo install garage`, which `make test` does once), one single-node server per test on
//! loopback ports, in the test's own directory, stopped and removed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::kafka::{Running, free_tcp_port, wait_listening};
use crate::support::{StoreArg, require_tool};

const BUCKET: &str = "hawking";
/// Garage's key format: `GK` and 24 hex digits, a 64-hex-digit secret.
const KEY_ID: &str = "GK0123456789abcdef01234567";
const SECRET: &str = "5ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7";

/// A running Garage with bucket `hawking` and a key that may read and write it.
pub struct Garage {
    server: Option<Running>,
    dir: PathBuf,
    s3_port: u16,
    config: PathBuf,
    endpoint: String,
    /// Where `hawking serve` keeps this machine's state and logs for the test.
    local: PathBuf,
}

impl Garage {
    /// Starts Garage under `dir` and makes its bucket.
    pub fn start(dir: &Path) -> Garage {
        require_tool("garage");
        let (s3, rpc) = (free_tcp_port(), free_tcp_port());
        let config = dir.join("garage.toml");
        std::fs::write(
            &config,
            format!(
                "metadata_dir = \"{meta}\"\n\
                 data_dir = \"{data}\"\n\
                 db_engine = \"sqlite\"\n\
                 replication_factor = 1\n\
                 rpc_bind_addr = \"127.0.0.1:{rpc}\"\n\
                 rpc_public_addr = \"127.0.0.1:{rpc}\"\n\
                 rpc_secret = \"{secret}\"\n\
                 [s3_api]\n\
                 s3_region = \"us-east-1\"\n\
                 api_bind_addr = \"127.0.0.1:{s3}\"\n",
                meta = dir.join("garage-meta").display(),
                data = dir.join("garage-data").display(),
                secret = "7e57".repeat(16),
            ),
        )
        .unwrap();
        let mut garage = Garage {
            server: None,
            dir: dir.to_path_buf(),
            s3_port: s3,
            config,
            endpoint: format!("http://127.0.0.1:{s3}"),
            local: dir.join("hawking-local"),
        };
        garage.resume();
        let node = garage.cli_until_ok(&["node", "id", "-q"]);
        let node = node.trim().split('@').next().unwrap().to_string();
        garage.cli(&["layout", "assign", "-z", "test", "-c", "1G", &node]);
        garage.cli(&["layout", "apply", "--version", "1"]);
        garage.cli(&["bucket", "create", BUCKET]);
        garage.cli(&["key", "import", "--yes", "-n", "hawking", KEY_ID, SECRET]);
        garage.cli(&[
            "bucket", "allow", "--read", "--write", "--owner", BUCKET, "--key", "hawking",
        ]);
        garage
    }

    /// Stops the server (SIGKILL): the bucket is unreachable until [`Garage::resume`].
    pub fn stop(&mut self) {
        self.server = None;
    }

    /// Starts the server (again) on its ports, with what it stored.
    pub fn resume(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("garage.log"))
            .unwrap();
        let server = Command::new("garage")
            .arg("-c")
            .arg(&self.config)
            .arg("server")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start garage");
        self.server = Some(Running(server));
        wait_listening(self.s3_port, "garage");
    }

    /// The store at `prefix` of the bucket.
    pub fn store(&self, prefix: &str) -> S3Store {
        S3Store {
            url: format!("s3://{BUCKET}/{prefix}"),
            env: self.env(),
            local: self.local.join(prefix),
        }
    }

    /// The environment that points an S3 client at this server.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", KEY_ID),
            ("AWS_SECRET_ACCESS_KEY", SECRET),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_REGION", "us-east-1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// Runs the `garage` command against this server.
    fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new("garage")
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .output()
            .unwrap()
    }

    /// As `run`; fails the test when the command fails.
    fn cli(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "garage {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// As `cli`, retried while the server is still starting its RPC.
    fn cli_until_ok(&self, args: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = self.run(args);
            if out.status.success() {
                return String::from_utf8_lossy(&out.stdout).into_owned();
            }
            assert!(
                Instant::now() < deadline,
                "garage {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A store in a bucket of a test's Garage, as `hawking` commands are pointed at it.
pub struct S3Store {
    url: String,
    env: Vec<(String, String)>,
    local: PathBuf,
}

impl S3Store {
    /// The same store, with `hawking serve`'s state in `dir` (a second process beside the
    /// first keeps its own).
    pub fn with_local_dir(mut self, dir: &Path) -> S3Store {
        self.local = dir.to_path_buf();
        self
    }
}

impl StoreArg for S3Store {
    fn location(&self) -> std::ffi::OsString {
        self.url.clone().into()
    }

    fn env(&self) -> Vec<(String, String)> {
        self.env.clone()
    }

    fn local_dir(&self) -> Option<PathBuf> {
        std::fs::create_dir_all(&self.local).unwrap();
        Some(self.local.clone())
    }

    fn log_dir(&self) -> PathBuf {
        self.local_dir().unwrap()
    }
}

/// While the bucket is unreachable, `hawking serve` keeps accepting flows (its commits fail
/// and the rows stay buffered), and stores every one of them once the service is back.
#[test]
fn flows_accepted_while_the_bucket_is_unreachable_are_stored_once_it_is_back() {
    use crate::support::{Hawking, send_ipfix, sql_i64};
    use hawking_schemas::flow::FlowRecord;
    let tmp = tempfile::tempdir().unwrap();
    let mut garage = Garage::start(tmp.path());
    let data = garage.store("outage");
    let hawking = Hawking::start(&data, &[]);
    let now = hawking_schemas::time::now_micros();
    let flows = |from: u16| -> Vec<FlowRecord> {
        (from..from + 200)
            .map(|i| FlowRecord {
                flow_start: now,
                flow_end: now + 1_000_000,
                src_ip: hawking_schemas::ip::parse_ip("10.1.0.1").unwrap(),
                dst_ip: hawking_schemas::ip::parse_ip("10.2.0.1").unwrap(),
                src_port: i,
                dst_port: 443,
                protocol: 6,
                tcp_flags: 0,
                bytes: 1000 + i as u64,
                packets: 1,
                sampling_rate: 1,
                in_if: 1,
                out_if: 2,
            })
            .collect()
    };
    send_ipfix(hawking.netflow, "127.0.0.1", &flows(1000));
    hawking.wait_metric(
        "hawking_store_rows_written_total",
        &[("table", "flows")],
        200.0,
    );
    garage.stop();
    send_ipfix(hawking.netflow, "127.0.0.1", &flows(2000));
    hawking.wait_metric("hawking_flows_total", &[], 400.0);
    hawking.wait_metric("hawking_store_commit_errors_total", &[], 1.0);
    assert_eq!(
        hawking.metric("hawking_store_rows_written_total", &[("table", "flows")]),
        200.0,
        "nothing is stored while the bucket is away"
    );
    garage.resume();
    hawking.wait_metric(
        "hawking_store_rows_written_total",
        &[("table", "flows")],
        400.0,
    );
    let report = hawking.stop();
    assert_eq!(report.rows_committed, 400);
    assert_eq!(sql_i64(&data, "SELECT count(*) FROM flows"), 400);
    assert_eq!(
        sql_i64(&data, "SELECT count(DISTINCT src_port) FROM flows"),
        400
    );
}
