//! Test harness: a throwaway MariaDB with a row binlog, a tansu Kafka broker, and the daemon
//! binary, each on free 127.0.0.1 ports in a temporary folder. Nothing is mocked.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, TopicPartitionList};

pub const CDC_PASSWORD: &str = "cdc-secret";

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn find(bin: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/bin", "/usr/local/sbin"] {
        let p = Path::new(dir).join(bin);
        if p.exists() {
            return p;
        }
    }
    panic!("{bin} not found: run .ci/run (it installs MariaDB from Debian)");
}

pub struct MariaDb {
    pub dir: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
    pub extra_args: Vec<String>,
}

impl MariaDb {
    pub fn start() -> MariaDb {
        Self::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> MariaDb {
        let dir = tempfile::Builder::new()
            .prefix("cdc-mariadb-")
            .tempdir()
            .unwrap();
        std::fs::write(
            dir.path().join("init.sql"),
            "CREATE USER IF NOT EXISTS 'admin'@'127.0.0.1' IDENTIFIED BY 'adminpw';\n\
             GRANT ALL ON *.* TO 'admin'@'127.0.0.1' WITH GRANT OPTION;\n\
             CREATE USER IF NOT EXISTS 'cdc'@'127.0.0.1' IDENTIFIED BY 'cdc-secret';\n\
             GRANT REPLICATION SLAVE, BINLOG MONITOR, SELECT ON *.* TO 'cdc'@'127.0.0.1';\n",
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("tmp")).unwrap();
        let out = Command::new(find("mariadb-install-db"))
            .args([
                "--no-defaults",
                "--user=root",
                "--skip-test-db",
                "--auth-root-authentication-method=normal",
            ])
            .arg(format!("--datadir={}", dir.path().join("data").display()))
            // Each bootstrap gets its own tmpdir, from the environment (it ignores --tmpdir):
            // in a shared /tmp one bootstrap's clean-up deletes another's temporary tables.
            .env("TMPDIR", dir.path().join("tmp"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mariadb-install-db failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut m = MariaDb {
            port: free_port(),
            dir,
            child: None,
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
        };
        // Another process may take the free port before the server binds it: a new port then.
        for attempt in 1.. {
            m.spawn();
            match m.wait_ready() {
                Ok(()) => break,
                Err(log) if attempt < 5 && log.contains("Address already in use") => {
                    let _ = std::fs::remove_file(m.dir.path().join("error.log"));
                    m.port = free_port();
                }
                Err(log) => panic!("MariaDB did not start: {log}"),
            }
        }
        m
    }

    /// Starts the server on its port and data, and waits until it is ready.
    fn launch(&mut self) {
        self.spawn();
        if let Err(log) = self.wait_ready() {
            panic!("MariaDB did not start: {log}");
        }
    }

    fn spawn(&mut self) {
        let d = self.dir.path();
        // mariadb-install-db removes its tmpdir when done.
        std::fs::create_dir_all(d.join("tmp")).unwrap();
        let child = Command::new(find("mariadbd"))
            .args([
                "--no-defaults",
                "--user=root",
                "--bind-address=127.0.0.1",
                "--skip-name-resolve",
            ])
            .arg(format!("--datadir={}", d.join("data").display()))
            .arg(format!("--port={}", self.port))
            .arg(format!("--socket={}", d.join("mysqld.sock").display()))
            .arg(format!("--pid-file={}", d.join("mysqld.pid").display()))
            .arg(format!("--log-error={}", d.join("error.log").display()))
            .arg(format!("--log-bin={}", d.join("data/binlog").display()))
            .arg(format!("--tmpdir={}", d.join("tmp").display()))
            .args([
                "--binlog-format=ROW",
                "--binlog-row-image=FULL",
                "--binlog-row-metadata=FULL",
                "--server-id=1",
                "--innodb-buffer-pool-size=64M",
                "--innodb-log-file-size=256M",
                "--max-allowed-packet=256M",
                "--character-set-server=utf8mb4",
                "--collation-server=utf8mb4_general_ci",
            ])
            .arg(format!("--init-file={}", d.join("init.sql").display()))
            .args(&self.extra_args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// Waits until the admin user can log in; `Err(error log)` when the server exited first
    /// (another process took its port between `free_port` and the bind, say: whatever else
    /// listens there must not be taken for it).
    fn wait_ready(&mut self) -> Result<(), String> {
        let start = Instant::now();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    self.child = None;
                    return Err(format!("mariadbd exited ({status}):\n{}", self.error_log()));
                }
            }
            // The init file runs after the port opens: the admin user working is the signal.
            // Bounded: a foreign listener on the port may never answer the handshake.
            let ready = rt.block_on(async {
                let login = mysql_async::Conn::new(self.opts("admin", "adminpw"));
                match tokio::time::timeout(Duration::from_secs(2), login).await {
                    Ok(Ok(c)) => {
                        let _ = c.disconnect().await;
                        true
                    }
                    _ => false,
                }
            });
            if ready {
                return Ok(());
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "MariaDB admin login: {}",
                self.error_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    pub fn opts(&self, user: &str, pass: &str) -> mysql_async::Opts {
        let b = mysql_async::OptsBuilder::default()
            .ip_or_hostname("127.0.0.1")
            .tcp_port(self.port)
            .user(Some(user))
            .pass(Some(pass))
            .prefer_socket(false);
        // A server started with --require-secure-transport only talks TLS.
        let tls = self
            .extra_args
            .iter()
            .any(|a| a == "--require-secure-transport=ON");
        if tls {
            b.ssl_opts(Some(
                mysql_async::SslOpts::default().with_danger_accept_invalid_certs(true),
            ))
            .into()
        } else {
            b.into()
        }
    }

    pub async fn conn(&self) -> mysql_async::Conn {
        mysql_async::Conn::new(self.opts("admin", "adminpw"))
            .await
            .unwrap()
    }

    /// Runs statements (separated by `;\n`) as admin.
    pub async fn exec(&self, sql: &str) {
        let mut c = self.conn().await;
        c.query_drop(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        c.disconnect().await.unwrap();
    }

    /// The rows of a query, as admin.
    pub async fn query<T: mysql_async::prelude::FromRow + Send + 'static>(
        &self,
        sql: &str,
    ) -> Vec<T> {
        let mut c = self.conn().await;
        let rows = c.query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        c.disconnect().await.unwrap();
        rows
    }

    /// The rows of a query, or none while it fails (a table the daemon has yet to create).
    pub async fn query_or_empty<T: mysql_async::prelude::FromRow + Send + 'static>(
        &self,
        sql: &str,
    ) -> Vec<T> {
        let mut c = self.conn().await;
        let rows = c.query(sql).await.unwrap_or_default();
        let _ = c.disconnect().await;
        rows
    }

    /// SIGTERM, wait, start again on the same port and data.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc_kill(c.id() as i32, 15) };
            let _ = c.wait();
        }
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

pub struct Kafka {
    pub dir: tempfile::TempDir,
    pub port: u16,
    child: Child,
}

pub fn tansu_bin() -> PathBuf {
    if let Ok(p) = std::env::var("TANSU_BIN") {
        return PathBuf::from(p);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    PathBuf::from(home).join(".cache/cdc-enricher/tansu-0.6.0/bin/tansu")
}

impl Kafka {
    pub fn start() -> Kafka {
        let dir = tempfile::Builder::new()
            .prefix("cdc-tansu-")
            .tempdir()
            .unwrap();
        let port = free_port();
        let bin = tansu_bin();
        assert!(
            bin.exists(),
            "{} missing: run .ci/run (it builds tansu once)",
            bin.display()
        );
        let log = std::fs::File::create(dir.path().join("tansu.log")).unwrap();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "memory://tansu/",
            ])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "tansu did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Kafka { dir, port, child }
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A consumer of `topic` (partition 0) from its start that keeps what it read.
    pub fn tail(&self, topic: &str) -> Tail {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.brokers())
            .set("group.id", format!("tail-{}", free_port()))
            .set("enable.auto.commit", "false")
            .set("fetch.max.bytes", "104857600")
            .set("max.partition.fetch.bytes", "104857600")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, 0, rdkafka::Offset::Beginning)
            .unwrap();
        c.assign(&tpl).unwrap();
        Tail {
            c,
            records: Vec::new(),
        }
    }

    /// A consumer of every partition of `topic` (`partitions` of them) from its start.
    pub fn tail_all(&self, topic: &str, partitions: i32) -> Tail {
        let t = self.tail(topic);
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning)
                .unwrap();
        }
        t.c.assign(&tpl).unwrap();
        t
    }

    /// Reads `topic` (partition 0) from the start until `n` records or `timeout`.
    pub fn read(&self, topic: &str, n: usize, timeout: Duration) -> Vec<Record> {
        let mut t = self.tail(topic);
        let start = Instant::now();
        while t.records.len() < n && start.elapsed() < timeout {
            t.poll(Duration::from_millis(200));
        }
        t.records
    }
}

impl Drop for Kafka {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Tail {
    c: BaseConsumer,
    pub records: Vec<Record>,
}

impl Tail {
    /// Reads what is available now (for up to `wait`).
    pub fn poll(&mut self, wait: Duration) -> usize {
        let start = Instant::now();
        while start.elapsed() < wait {
            match self.c.poll(Duration::from_millis(50)) {
                Some(Ok(m)) => self.records.push(Record {
                    key: m.key().map(|k| String::from_utf8(k.to_vec()).unwrap()),
                    value: m.payload().map(|v| String::from_utf8(v.to_vec()).unwrap()),
                    offset: m.offset(),
                }),
                // The topic may not exist yet: the daemon creates it.
                Some(Err(rdkafka::error::KafkaError::MessageConsumption(
                    rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition,
                ))) => std::thread::sleep(Duration::from_millis(50)),
                Some(Err(e)) => panic!("consume: {e}"),
                None => break,
            }
        }
        self.records.len()
    }

    /// Reads until nothing new came for `quiet`.
    pub fn drain(&mut self, quiet: Duration) -> usize {
        let mut last = Instant::now();
        let mut n = self.records.len();
        while last.elapsed() < quiet {
            let m = self.poll(Duration::from_millis(100));
            if m > n {
                n = m;
                last = Instant::now();
            }
        }
        n
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub key: Option<String>,
    pub value: Option<String>,
    pub offset: i64,
}

impl Record {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.value.as_deref().expect("a value")).unwrap()
    }
}

/// Pipeline files made at run time, `(name, yaml)`, as [`Daemon::new`] takes them.
pub fn pipeline_refs(files: &[(String, String)]) -> Vec<(&str, &str)> {
    files
        .iter()
        .map(|(n, y)| (n.as_str(), y.as_str()))
        .collect()
}

/// A daemon config and pipelines in a temporary folder.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub child: Option<Child>,
    /// Extra environment for the daemon process.
    pub env: Vec<(String, String)>,
}

impl Daemon {
    pub fn new(db: &MariaDb, kafka: Option<&Kafka>, pipelines: &[(&str, &str)]) -> Daemon {
        Self::with_config(db, kafka, pipelines, "")
    }

    pub fn with_config(
        db: &MariaDb,
        kafka: Option<&Kafka>,
        pipelines: &[(&str, &str)],
        extra: &str,
    ) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("cdc-daemon-")
            .tempdir()
            .unwrap();
        let kafka_section = kafka
            .map(|k| {
                format!(
                    "kafka:\n  brokers: {}\n  properties:\n    linger.ms: \"2\"\n",
                    k.brokers()
                )
            })
            .unwrap_or_default();
        let cfg = format!(
            "source:\n  host: 127.0.0.1\n  port: {}\n  user: cdc\n  password: ${{CDC_PASSWORD}}\n  server_id: 4242\n  heartbeat_ms: 500\n  start: earliest\n\
             {kafka_section}checkpoint:\n  store:\n    file:\n      path: state/checkpoint.json\n  interval_ms: 100\n{extra}",
            db.port
        );
        std::fs::write(dir.path().join("cdc-enricher.yaml"), cfg).unwrap();
        std::fs::create_dir(dir.path().join("pipelines")).unwrap();
        for (name, body) in pipelines {
            std::fs::write(
                dir.path().join("pipelines").join(format!("{name}.yaml")),
                body,
            )
            .unwrap();
        }
        Daemon {
            dir,
            child: None,
            env: Vec::new(),
        }
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("cdc-enricher.yaml")
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_cdc-enricher"));
        c.args(args)
            .current_dir(self.dir.path())
            .env("CDC_PASSWORD", CDC_PASSWORD)
            .env("RUST_LOG", "info");
        // Nothing of the machine's AWS settings leaks in (profiles, endpoint overrides, CA
        // bundles): a test's daemon sees only what the test gives it.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("AWS_") {
                c.env_remove(&k);
            }
        }
        c.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        c
    }

    /// `cdc-enricher check`: (exit code, stdout, stderr)
    pub fn check(&self) -> (i32, String, String) {
        let out = self
            .command(&["check", "-c", "cdc-enricher.yaml"])
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub fn spawn(&mut self) {
        self.spawn_with(&[]);
    }

    /// `run` with more arguments (`--role worker`).
    pub fn spawn_with(&mut self, more: &[&str]) {
        let mut args = vec!["run", "-c", "cdc-enricher.yaml"];
        args.extend_from_slice(more);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("daemon.log"))
            .unwrap();
        let child = self
            .command(&args)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGTERM and wait; returns the exit code.
    pub fn terminate(&mut self) -> i32 {
        let mut c = self.child.take().expect("running");
        unsafe { libc_kill(c.id() as i32, 15) };
        let start = Instant::now();
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                return s.code().unwrap_or(-1);
            }
            if start.elapsed() > Duration::from_secs(60) {
                let _ = c.kill();
                panic!("daemon did not stop on SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn checkpoint(&self) -> Option<serde_json::Value> {
        std::fs::read_to_string(self.dir.path().join("state/checkpoint.json"))
            .ok()
            .map(|s| serde_json::from_str(&s).unwrap())
    }

    /// Waits up to `secs` for the daemon to exit by itself; its exit code.
    pub fn wait_exit(&mut self, secs: u64) -> i32 {
        let mut c = self.child.take().expect("running");
        let start = Instant::now();
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                return s.code().unwrap_or(-1);
            }
            if start.elapsed() > Duration::from_secs(secs) {
                let _ = c.kill();
                panic!("daemon still running after {secs} s:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn assert_running(&mut self) {
        if let Some(c) = self.child.as_mut() {
            if let Some(s) = c.try_wait().unwrap() {
                panic!("daemon exited with {s}:\n{}", self.log());
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs an async block on a fresh runtime (tests stay plain `#[test]`s).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// A TCP proxy to a local port that can stall the connections it carries (they stay open but
/// no byte moves), as a dead network path does. Connections made after a stall pass normally.
/// A throttled one moves at most so many bytes per second each way, as a slow link does.
pub struct StallingProxy {
    pub port: u16,
    generation: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl StallingProxy {
    pub fn start(upstream: u16) -> StallingProxy {
        Self::with_rate(upstream, None)
    }

    /// A proxy moving at most `bytes_per_sec` each way on each connection.
    pub fn throttled(upstream: u16, bytes_per_sec: u64) -> StallingProxy {
        Self::with_rate(upstream, Some(bytes_per_sec))
    }

    fn with_rate(upstream: u16, bytes_per_sec: Option<u64>) -> StallingProxy {
        use std::io::{Read, Write};
        use std::sync::atomic::{AtomicU64, Ordering};
        use std::sync::Arc;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let generation = Arc::new(AtomicU64::new(0));
        let g = generation.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let born = g.load(Ordering::SeqCst);
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server.try_clone().unwrap(), client.try_clone().unwrap()),
                ] {
                    let g = g.clone();
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 65536];
                        from.set_read_timeout(Some(Duration::from_millis(50)))
                            .unwrap();
                        loop {
                            if g.load(Ordering::SeqCst) != born {
                                // Stalled: hold both sockets open, move nothing.
                                std::thread::sleep(Duration::from_secs(3600));
                            }
                            match from.read(&mut buf) {
                                Ok(0) => {
                                    let _ = to.shutdown(std::net::Shutdown::Write);
                                    return;
                                }
                                Ok(n) => {
                                    if to.write_all(&buf[..n]).is_err() {
                                        return;
                                    }
                                    if let Some(rate) = bytes_per_sec {
                                        std::thread::sleep(Duration::from_secs_f64(
                                            n as f64 / rate as f64,
                                        ));
                                    }
                                }
                                Err(e)
                                    if matches!(
                                        e.kind(),
                                        std::io::ErrorKind::WouldBlock
                                            | std::io::ErrorKind::TimedOut
                                    ) => {}
                                Err(_) => return,
                            }
                        }
                    });
                }
            }
        });
        StallingProxy { port, generation }
    }

    /// Every connection open now stops moving bytes; new ones work.
    pub fn stall_open_connections(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The local AWS stand-in (tests/aws_standin/standin.py) on a free port.
pub struct AwsStandin {
    pub port: u16,
    child: Child,
}

impl AwsStandin {
    pub fn start() -> AwsStandin {
        use std::io::BufRead;
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/aws_standin/standin.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg("0")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("PORT ")
            .expect("PORT line")
            .parse()
            .unwrap();
        AwsStandin { port, child }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn http(&self, method: &str, path: &str, body: &str) -> String {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(s, "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        resp.split_once("\r\n\r\n")
            .map(|x| x.1.to_string())
            .unwrap_or_default()
    }

    /// Scripts faults: `{"throttle": 3}`, `{"throttle_rate": 0.3, "seed": 1}`, `{"status": 503, "times": 2}`.
    pub fn control(&self, json: &str) {
        self.http("POST", "/_control", json);
    }

    pub fn reset(&self) {
        self.http("POST", "/_reset", "");
    }

    /// Every request so far: target, documents, attempt header, status.
    pub fn log(&self) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.http("GET", "/_log", "")).unwrap()
    }

    /// The environment a daemon needs to sign requests the stand-in accepts, and nothing else
    /// of AWS's default chain (no profile files, no instance metadata).
    pub fn env() -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", "AKIDSTANDIN"),
            ("AWS_SECRET_ACCESS_KEY", "standin-secret"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_CONFIG_FILE", "/nonexistent"),
            ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }
}

impl Drop for AwsStandin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP GET on 127.0.0.1 (waiting up to 30 s for the port to listen): (status line,
/// body).
pub fn http_get(port: u16, path: &str) -> (String, String) {
    use std::io::{Read, Write};
    // The daemon may not be listening yet: wait for it (a test's own deadline bounds the rest).
    let start = Instant::now();
    let mut s = loop {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(_) if start.elapsed() < Duration::from_secs(30) => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("nothing listens on 127.0.0.1:{port} after 30 s: {e}"),
        }
    };
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), body.to_string())
}

/// The value of one sample (`name{labels}` exactly) in a Prometheus text body.
pub fn sample<'a>(body: &'a str, name: &str) -> Option<&'a str> {
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .map(|l| &l[name.len() + 1..])
}

/// The value of one sample as a number (`0` and `0.0` alike).
pub fn value(body: &str, name: &str) -> Option<f64> {
    sample(body, name).and_then(|v| v.parse().ok())
}

/// Polls `tail` until it holds `n` records; fails with the daemon's log after `secs` or if the
/// daemon exits.
pub fn wait_records(d: &mut Daemon, tail: &mut Tail, n: usize, secs: u64) {
    let start = Instant::now();
    while tail.poll(Duration::from_millis(200)) < n {
        d.assert_running();
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "{} of {n} records\n{}",
            tail.records.len(),
            d.log()
        );
    }
}

/// Waits until the daemon's log holds `needle` at least `n` times; fails with the log after
/// `secs` or if the daemon exits.
pub fn wait_log(d: &mut Daemon, needle: &str, n: usize, secs: u64) {
    let start = Instant::now();
    while d.log().matches(needle).count() < n {
        d.assert_running();
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "waiting for {n} × `{needle}` in the log:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Statements run one after another on their own connection until stopped: `sql(n)` is the
/// n-th (from 1), with `pause` between them.
pub struct BackgroundWriter {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl BackgroundWriter {
    pub fn start(
        db: &MariaDb,
        pause: Duration,
        sql: impl Fn(u64) -> String + Send + 'static,
    ) -> BackgroundWriter {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (flag, opts) = (stop.clone(), db.opts("admin", "adminpw"));
        let thread = std::thread::spawn(move || {
            block_on(async move {
                let mut c = mysql_async::Conn::new(opts).await.unwrap();
                let mut n: u64 = 0;
                while !flag.load(Ordering::Relaxed) {
                    n += 1;
                    c.query_drop(sql(n)).await.unwrap();
                    if !pause.is_zero() {
                        tokio::time::sleep(pause).await;
                    }
                }
                n
            })
        });
        BackgroundWriter { stop, thread }
    }

    /// Stops after the statement in progress; returns how many ran.
    pub fn stop(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// A fidelity case of `../shared/fidelity-cases/` (its `case.sql`, `pipeline.yaml`).
pub fn fidelity_case(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/fidelity-cases")
        .join(name)
}

/// A fidelity case set up against the real parts: a MariaDB with the case's `case.sql` run,
/// a broker, and the daemon spawned on the case's `pipeline.yaml` (plus `extra` pipelines)
/// with `daemon_config` appended to its configuration.
pub fn start_fidelity_case(
    name: &str,
    extra: &[(&str, &str)],
    daemon_config: &str,
) -> (MariaDb, Kafka, Daemon) {
    let db = MariaDb::start();
    let kafka = Kafka::start();
    let dir = fidelity_case(name);
    db.run_script(&dir.join("case.sql"));
    let pipeline = std::fs::read_to_string(dir.join("pipeline.yaml")).unwrap();
    let mut pipelines = vec![("case", pipeline.as_str())];
    pipelines.extend_from_slice(extra);
    let mut d = Daemon::with_config(&db, Some(&kafka), &pipelines, daemon_config);
    d.spawn();
    (db, kafka, d)
}

impl MariaDb {
    /// Runs a SQL script with the `mariadb` command-line client as admin (so client commands
    /// such as `connect` work as they do for a user); panics with its output on failure.
    pub fn run_script(&self, path: &Path) -> String {
        let out = Command::new(find("mariadb"))
            .args([
                "--no-defaults",
                "--default-character-set=utf8mb4",
                "-h127.0.0.1",
            ])
            .arg(format!("-P{}", self.port))
            .args(["-uadmin", "-padminpw"])
            .stdin(std::fs::File::open(path).unwrap())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// A record's value split into its top-level fields, each kept as the exact JSON text the
/// daemon wrote (numbers are compared as written, not through `f64`).
pub fn raw_fields(r: &Record) -> std::collections::HashMap<String, String> {
    let m: std::collections::HashMap<String, &serde_json::value::RawValue> =
        serde_json::from_str(r.value.as_deref().expect("a value")).unwrap();
    m.into_iter()
        .map(|(k, v)| (k, v.get().to_string()))
        .collect()
}

/// `(op, key, before, after)` of each record, the images as parsed JSON.
pub fn changes(
    recs: &[Record],
) -> Vec<(String, Option<String>, serde_json::Value, serde_json::Value)> {
    recs.iter()
        .map(|r| {
            let v = r.json();
            (
                v["op"].as_str().unwrap_or_default().to_string(),
                r.key.clone(),
                v["before"].clone(),
                v["after"].clone(),
            )
        })
        .collect()
}

/// An enrichment without its `lineage`, for comparing the rest exactly; the lineage itself
/// must be there, 16 lowercase hex digits.
pub fn sans_lineage(mut e: serde_json::Value) -> serde_json::Value {
    let lineage = e
        .as_object_mut()
        .and_then(|m| m.shift_remove("lineage"))
        .unwrap_or_else(|| panic!("no lineage in {e}"));
    let l = lineage.as_str().unwrap_or_default();
    assert!(
        l.len() == 16
            && l.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "lineage `{lineage}`"
    );
    e
}

/// The writer's account: it may read and write `shop` (and create the progress and
/// dead-letter tables there).
pub const WRITER: &str = "CREATE USER 'writer'@'127.0.0.1' IDENTIFIED BY 'writer-secret';
    GRANT SELECT, INSERT, UPDATE, DELETE, CREATE ON shop.* TO 'writer'@'127.0.0.1';";

/// `support` with a trigger counting the daemon's writes: every UPDATE that leaves the message
/// as it was is one of them.
pub const SUPPORT: &str =
    "CREATE TABLE shop.support (id INT PRIMARY KEY, message TEXT, sentiment VARCHAR(20),
      confidence DOUBLE, writes INT NOT NULL DEFAULT 0);
    CREATE TRIGGER shop.count_writes BEFORE UPDATE ON shop.support FOR EACH ROW
      SET NEW.writes = OLD.writes + (NEW.message <=> OLD.message);";
