//! The one harness every integration test uses: a real Nisshi broker on a
//! loopback port, the real `junction` binary as a child process, and real
//! Kafka clients to feed it and read what it publishes.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;

/// How long a test waits for something that should happen, before failing.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Waits until `done()` holds; fails the test after PATIENCE, naming `what`.
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A unique name per test, so that tests sharing a broker never collide.
pub fn unique(prefix: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("{prefix}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst))
}

fn nisshi_binary() -> PathBuf {
    if let Ok(p) = std::env::var("JUNCTION_NISSHI") {
        return PathBuf::from(p);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let cache = std::env::var("JUNCTION_CACHE").unwrap_or_else(|_| format!("{home}/.cache/junction"));
    let p = PathBuf::from(cache).join("tools/bin/nisshi");
    assert!(
        p.exists(),
        "the Nisshi broker is not installed at {}; run scripts/setup.sh (or set JUNCTION_NISSHI)",
        p.display()
    );
    p
}

/// A record to produce: key and value, either possibly absent.
pub type RawRecord = (Option<Vec<u8>>, Option<Vec<u8>>);

/// Where a broker keeps its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// Lost when the broker stops.
    Memory,
    /// An SQLite file in the broker's directory: survives a restart.
    Sqlite,
}

/// The password of the SCRAM user of a secure broker: tests check that it never leaks.
pub const SECRET_PASSWORD: &str = "s3cret-Pa55word-never-logged";

/// A Nisshi broker on a loopback port, killed when dropped.
pub struct Broker {
    child: Option<Child>,
    pub port: u16,
    pub bootstrap: String,
    pub dir: tempfile::TempDir,
    storage: Storage,
    /// Serve TLS only and require SCRAM authentication.
    secure: bool,
    /// The client properties every client of this broker needs (security).
    pub properties: Vec<(String, String)>,
    runtime: tokio::runtime::Runtime,
}

impl Broker {
    pub fn start() -> Broker {
        Broker::start_with(Storage::Memory)
    }

    pub fn start_with(storage: Storage) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut b = Broker {
            child: None,
            port,
            bootstrap: format!("127.0.0.1:{port}"),
            dir,
            storage,
            secure: false,
            properties: Vec::new(),
            runtime: tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap(),
        };
        b.resume();
        b
    }

    /// A broker that serves only TLS (a self-signed certificate made here) and
    /// requires SASL/SCRAM-SHA-256 as user `junction` with [`SECRET_PASSWORD`].
    pub fn start_secure() -> Broker {
        let mut b = Broker::start_with(Storage::Sqlite);
        // Users are stored through a broker that does not yet require logging in.
        let created = Command::new(nisshi_binary())
            .args(["user", "create", "--broker", &format!("tcp://{}", b.bootstrap), "--mechanism", "scram256"])
            .args(["junction", SECRET_PASSWORD])
            .output()
            .expect("run nisshi user create");
        assert!(created.status.success(), "nisshi user create: {}", String::from_utf8_lossy(&created.stderr));
        b.stop();
        let made = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost"])
            .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", "key.pem", "-out", "cert.pem"])
            .current_dir(b.dir.path())
            .output()
            .expect("run openssl (scripts/setup.sh installs it)");
        assert!(made.status.success(), "openssl: {}", String::from_utf8_lossy(&made.stderr));
        b.secure = true;
        b.properties = [
            ("security.protocol", "SASL_SSL".to_string()),
            ("sasl.mechanisms", "SCRAM-SHA-256".to_string()),
            ("sasl.username", "junction".to_string()),
            ("sasl.password", SECRET_PASSWORD.to_string()),
            ("ssl.ca.location", b.dir.path().join("cert.pem").display().to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        b.resume();
        b
    }

    /// Stops the broker (SIGKILL); clients see it as unavailable.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the broker again on the same port and storage.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "the broker is running");
        self.child = Some(spawn_broker(self.port, self.dir.path(), self.storage, self.secure));
        self.wait_ready();
    }

    /// Clients for a broker this harness did not start (librdkafka's mock cluster).
    pub fn external(bootstrap: String) -> Broker {
        Broker {
            child: None,
            port: 0,
            bootstrap,
            dir: tempfile::tempdir().unwrap(),
            storage: Storage::Memory,
            secure: false,
            properties: Vec::new(),
            runtime: tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap(),
        }
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("the broker exited at start-up: {status}; see {}/broker.log", self.dir.path().display());
            }
            let client: BaseConsumer = self.client_config().create().unwrap();
            if client.fetch_metadata(None, Duration::from_secs(2)).is_ok() {
                return;
            }
            assert!(Instant::now() < deadline, "the broker did not answer on {}", self.bootstrap);
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap);
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }

    pub fn create_topic(&self, name: &str, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> = self.client_config().create().unwrap();
        let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        let results = self.runtime.block_on(admin.create_topics([&topic], &AdminOptions::new())).unwrap();
        for r in results {
            r.unwrap_or_else(|(t, e)| panic!("cannot create topic {t}: {e}"));
        }
        // Wait until the metadata shows every partition.
        let deadline = Instant::now() + PATIENCE;
        let client: BaseConsumer = self.client_config().create().unwrap();
        loop {
            if let Ok(md) = client.fetch_metadata(Some(name), Duration::from_secs(5)) {
                if md
                    .topics()
                    .first()
                    .is_some_and(|t| t.error().is_none() && t.partitions().len() == partitions as usize)
                {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "topic {name} did not appear");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn partition_count(&self, topic: &str) -> usize {
        let client: BaseConsumer = self.client_config().create().unwrap();
        let md = client.fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap();
        md.topics().first().map_or(0, |t| t.partitions().len())
    }

    /// The offsets `group` has committed on each partition of `topic` (-1: none).
    pub fn committed_offsets(&self, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
        let client: BaseConsumer = self.client_config().set("group.id", group).create().unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition(topic, p);
        }
        let committed = client.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
        (0..partitions)
            .map(|p| match committed.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                _ => -1,
            })
            .collect()
    }

    /// The end offset of each partition of `topic`.
    pub fn end_offsets(&self, topic: &str, partitions: i32) -> Vec<i64> {
        let client: BaseConsumer = self.client_config().create().unwrap();
        (0..partitions).map(|p| client.fetch_watermarks(topic, p, Duration::from_secs(10)).unwrap().1).collect()
    }

    pub fn producer(&self) -> BaseProducer {
        self.client_config().set("partitioner", "murmur2_random").set("linger.ms", "5").create().unwrap()
    }

    /// Produces records (key, value) to a topic and waits for every delivery.
    pub fn produce(&self, topic: &str, records: &[RawRecord]) {
        let producer = self.producer();
        for (key, value) in records {
            let mut r: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic);
            if let Some(k) = key {
                r = r.key(k.as_slice());
            }
            if let Some(v) = value {
                r = r.payload(v.as_slice());
            }
            loop {
                match producer.send(r) {
                    Ok(()) => break,
                    Err((_, back)) => {
                        r = back;
                        producer.poll(Duration::from_millis(10));
                    }
                }
            }
        }
        producer.flush(Duration::from_secs(30)).unwrap();
    }

    /// Produces step events, each keyed by its workflow ID.
    pub fn produce_events(&self, topic: &str, events: &[Value]) {
        let records: Vec<_> = events
            .iter()
            .map(|e| {
                (Some(e["workflow_id"].as_str().unwrap().as_bytes().to_vec()), Some(serde_json::to_vec(e).unwrap()))
            })
            .collect();
        self.produce(topic, &records);
    }

    /// A consumer that reads a whole topic from the beginning, as a
    /// `read_committed` user of the output topic would.
    pub fn reader(&self, topic: &str) -> Reader {
        let consumer: BaseConsumer = self
            .client_config()
            .set("group.id", unique("reader"))
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..self.partition_count(topic) as i32 {
            tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
        }
        consumer.assign(&tpl).unwrap();
        Reader { consumer, records: Vec::new() }
    }
}

fn spawn_broker(port: u16, dir: &Path, storage: Storage, secure: bool) -> Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("broker.log")).unwrap();
    let url = format!("tcp://127.0.0.1:{port}");
    let engine = match storage {
        Storage::Memory => "memory://nisshi/",
        // Relative to the broker's working directory.
        Storage::Sqlite => "sqlite://broker.db",
    };
    let mut command = Command::new(nisshi_binary());
    command.args(["broker", "--listener-url", &url, "--advertised-listener-url", &url, "--storage-engine", engine]);
    if secure {
        command.args(["--cert", "cert.pem", "--key", "key.pem", "--authentication"]);
    }
    command.current_dir(dir).stdout(log.try_clone().unwrap()).stderr(log).spawn().expect("start the Nisshi broker")
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One record read back from a topic.
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: HashMap<String, String>,
    /// The record's timestamp (for an outcome: when junction sent it).
    pub timestamp_ms: i64,
}

impl Record {
    pub fn json(&self) -> Value {
        serde_json::from_slice(self.value.as_deref().unwrap()).unwrap()
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or_else(|| panic!("no header {name} on {self:?}"))
    }
}

/// What a fresh consumer gets at `offset`: tells a broker that does not
/// serve a stored record from a reader that fell behind.
fn probe(reader: &BaseConsumer, topic: &str, partition: i32, offset: i64) -> String {
    let servers = reader
        .client()
        .fetch_metadata(None, Duration::from_secs(5))
        .ok()
        .and_then(|m| m.brokers().first().map(|b| format!("{}:{}", b.host(), b.port())));
    let Some(servers) = servers else { return "probe: no metadata".into() };
    let fresh: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set("group.id", unique("probe"))
        .set("isolation.level", "read_uncommitted")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(offset)).unwrap();
    fresh.assign(&tpl).unwrap();
    match fresh.poll(Duration::from_secs(5)) {
        Some(Ok(m)) => format!("probe: a fresh consumer got offset {}", m.offset()),
        Some(Err(e)) => format!("probe: error {e}"),
        None => "probe: nothing within 5s".into(),
    }
}

pub struct Reader {
    consumer: BaseConsumer,
    pub records: Vec<Record>,
}

impl Reader {
    /// Reads until `done(records)` holds, or fails after PATIENCE.
    pub fn read_until(&mut self, what: &str, done: impl Fn(&[Record]) -> bool) -> &[Record] {
        let deadline = Instant::now() + PATIENCE;
        while !done(&self.records) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; read {} records; (partition, position, low, high): {:?}; last records: {:#?}",
                self.records.len(),
                self.positions(),
                self.summary()
            );
            self.poll(Duration::from_millis(200));
        }
        &self.records
    }

    /// Reads whatever arrives within `window`: to check that nothing more comes.
    pub fn read_for(&mut self, window: Duration) -> &[Record] {
        let end = Instant::now() + window;
        while Instant::now() < end {
            self.poll(Duration::from_millis(100));
        }
        &self.records
    }

    fn poll(&mut self, wait: Duration) {
        if let Some(m) = self.consumer.poll(wait) {
            let m = m.unwrap();
            let headers = m
                .headers()
                .map(|hs| {
                    hs.iter()
                        .map(|h| (h.key.to_string(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned()))
                        .collect()
                })
                .unwrap_or_default();
            self.records.push(Record {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(<[u8]>::to_vec),
                value: m.payload().map(<[u8]>::to_vec),
                headers,
                timestamp_ms: m.timestamp().to_millis().unwrap_or(0),
            });
        }
    }

    /// Per partition: (position, low watermark, high watermark), to tell a
    /// slow producer from records the broker does not hand out.
    fn positions(&self) -> Vec<(i32, String, i64, i64)> {
        let Ok(tpl) = self.consumer.position() else { return Vec::new() };
        tpl.elements()
            .iter()
            .map(|e| {
                let (lo, hi) = self
                    .consumer
                    .fetch_watermarks(e.topic(), e.partition(), Duration::from_secs(5))
                    .unwrap_or((-1, -1));
                let probe = match e.offset() {
                    Offset::Offset(o) if o < hi => probe(&self.consumer, e.topic(), e.partition(), o),
                    _ => String::new(),
                };
                (e.partition(), format!("{:?} {probe}", e.offset()), lo, hi)
            })
            .collect()
    }

    fn summary(&self) -> Vec<String> {
        self.records
            .iter()
            .rev()
            .take(20)
            .map(|r| String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned())
            .collect()
    }
}

/// Every workflow has exactly one distinct outcome: any repeat is identical
/// and carries the same outcome ID.
pub fn assert_one_outcome_each(records: &[Record], expected: usize) -> usize {
    let mut ids: HashMap<String, (String, Value)> = HashMap::new();
    let mut repeats = 0;
    for r in records {
        let v = r.json();
        let wf = v["workflow_id"].as_str().unwrap().to_string();
        let id = r.header("junction.outcome.id").to_string();
        match ids.get(&wf) {
            Some((seen_id, seen)) => {
                assert_eq!(seen_id, &id, "a repeat of {wf}'s outcome has another ID");
                assert_eq!(seen, &v, "a repeat of {wf}'s outcome differs");
                repeats += 1;
            }
            None => {
                ids.insert(wf, (id, v));
            }
        }
    }
    assert_eq!(ids.len(), expected, "workflows with an outcome");
    repeats
}

/// Outcome records grouped by workflow ID.
pub fn by_workflow(records: &[Record]) -> HashMap<String, Vec<Value>> {
    let mut out: HashMap<String, Vec<Value>> = HashMap::new();
    for r in records {
        let v = r.json();
        out.entry(v["workflow_id"].as_str().unwrap().to_string()).or_default().push(v);
    }
    out
}

/// Builds a step event.
pub fn event(workflow_id: &str, workflow_type: &str, step: &str, status: &str, event_id: Option<&str>) -> Value {
    let mut e = serde_json::json!({
        "workflow_id": workflow_id,
        "workflow_type": workflow_type,
        "step": step,
        "status": status,
    });
    if let Some(id) = event_id {
        e["event_id"] = Value::String(id.to_string());
    }
    e
}

/// The configuration a test runs junction with.
pub struct Setup {
    pub app: String,
    pub input: String,
    pub output: String,
    pub dead_letters: String,
    pub partitions: i32,
    pub guarantee: &'static str,
    pub commit_interval: &'static str,
    pub retention: &'static str,
    pub default_deadline: &'static str,
    pub workflows: String,
    pub bootstrap: String,
    /// Client properties for junction, beyond the harness's own: the broker's security settings.
    pub properties: Vec<(String, String)>,
    /// More lines for the `[state]` section.
    pub state_options: String,
}

impl Setup {
    /// Fresh topics on `broker` with the default workflow types of the tests.
    pub fn new(broker: &Broker, partitions: i32) -> Setup {
        let s = Setup::named(broker, partitions);
        broker.create_topic(&s.input, partitions);
        s
    }

    /// Fresh topic names, none of them created.
    pub fn named(broker: &Broker, partitions: i32) -> Setup {
        let app = unique("app");
        Setup {
            input: format!("{app}-in"),
            output: format!("{app}-out"),
            dead_letters: format!("{app}-dlq"),
            app,
            partitions,
            guarantee: "at_least_once",
            commit_interval: "100ms",
            retention: "24h",
            default_deadline: "7d",
            workflows: DEFAULT_WORKFLOWS.to_string(),
            bootstrap: broker.bootstrap.clone(),
            properties: broker.properties.clone(),
            state_options: String::new(),
        }
    }

    pub fn config_text(&self, state_dir: &Path, http_port: u16) -> String {
        format!(
            r#"
[kafka]
bootstrap_servers = "{bootstrap}"
application_id = "{app}"
input_topic = "{input}"
output_topic = "{output}"
dead_letter_topic = "{dlq}"
processing_guarantee = "{guarantee}"
commit_interval = "{interval}"

[kafka.properties]
"topic.metadata.refresh.interval.ms" = "1000"
# A member killed with -9 leaves the group when its session times out.
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "1000"
{properties}
[state]
dir = "{dir}"
retention = "{retention}"
default_deadline = "{default_deadline}"
{state_options}
[http]
listen = "127.0.0.1:{http_port}"

{workflows}
"#,
            bootstrap = self.bootstrap,
            app = self.app,
            input = self.input,
            output = self.output,
            dlq = self.dead_letters,
            guarantee = self.guarantee,
            interval = self.commit_interval,
            dir = state_dir.display(),
            retention = self.retention,
            default_deadline = self.default_deadline,
            workflows = self.workflows,
            properties = self.properties.iter().map(|(k, v)| format!("{k:?} = {v:?}\n")).collect::<String>(),
            state_options = self.state_options,
        )
    }
}

pub const DEFAULT_WORKFLOWS: &str = r#"
[[workflows]]
type = "order"
steps = ["payment", "inventory", "fraud_check"]

[[workflows]]
type = "signup"
steps = ["email", "profile", "welcome_credit"]
quorum = 2

[[workflows]]
type = "callback"
steps = ["request", "callback"]
deadline = "2s"
"#;

/// A running `junction run` process, killed when dropped.
pub struct Junction {
    child: Option<Child>,
    pub state_dir: PathBuf,
    pub http_port: u16,
    pub log: PathBuf,
    config: PathBuf,
    extra_env: Vec<(String, String)>,
}

impl Junction {
    /// Starts junction with its own state directory inside `work`.
    pub fn start(setup: &Setup, work: &Path, name: &str) -> Junction {
        Junction::start_with_env(setup, work, name, &[])
    }

    pub fn start_with_env(setup: &Setup, work: &Path, name: &str, env: &[(&str, &str)]) -> Junction {
        Junction::launch(setup, work, name, env, &work.join(format!("{name}-state")))
    }

    /// Starts junction with its state directory at `state_dir`.
    pub fn start_with_state(setup: &Setup, work: &Path, name: &str, state_dir: &Path) -> Junction {
        Junction::launch(setup, work, name, &[], state_dir)
    }

    fn launch(setup: &Setup, work: &Path, name: &str, env: &[(&str, &str)], state_dir: &Path) -> Junction {
        let state_dir = state_dir.to_path_buf();
        let http_port = free_port();
        let config = work.join(format!("{name}.toml"));
        std::fs::write(&config, setup.config_text(&state_dir, http_port)).unwrap();
        let mut j = Junction {
            child: None,
            state_dir,
            http_port,
            log: work.join(format!("{name}.log")),
            config,
            extra_env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        j.spawn();
        j
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_junction"))
            .args(["run", "--config"])
            .arg(&self.config)
            // JUNCTION_TEST_LOG, e.g. "debug", when a failing test needs more of junction's log.
            .env("RUST_LOG", std::env::var("JUNCTION_TEST_LOG").unwrap_or_else(|_| "info,librdkafka=warn".into()))
            .envs(self.extra_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start junction");
        self.child = Some(child);
    }

    /// `kill -9`: no chance to commit or close anything.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGTERM, then waits for the exit; returns whether it exited 0.
    pub fn terminate(&mut self) -> bool {
        let Some(mut c) = self.child.take() else { return false };
        Command::new("kill").args(["-TERM", &c.id().to_string()]).status().unwrap();
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                return status.success();
            }
            if Instant::now() > deadline {
                c.kill().unwrap();
                c.wait().unwrap();
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the process again after a kill, with the same state directory and port.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "still running");
        self.spawn();
    }

    /// Waits for the process to exit by itself; returns its exit code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                return status.code();
            }
            assert!(Instant::now() < deadline, "junction did not exit; its log:\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET a path on junction's HTTP endpoint: (status, body).
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.http_port, path)
    }

    /// Waits until /readyz says ready.
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            assert!(self.is_running(), "junction exited; its log:\n{}", self.logs());
            if let Some((200, _)) = self.get("/readyz") {
                return;
            }
            assert!(Instant::now() < deadline, "junction never became ready; its log:\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A counter's value summed over the label sets matching `filter`.
    pub fn metric(&self, name: &str, filter: &str) -> f64 {
        let (_, body) = self.get("/metrics").expect("metrics endpoint");
        body.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']) && l.contains(filter))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

impl Drop for Junction {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- junction log {} ---\n{}", self.log.display(), self.logs());
        }
    }
}

pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").ok()?;
    let mut response = String::new();
    s.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((status, body))
}

/// The common arrangement: a broker, fresh topics, and one ready junction.
pub struct Running {
    // Field order is drop order: junction stops before the broker.
    pub junction: Junction,
    pub setup: Setup,
    pub work: tempfile::TempDir,
    pub broker: Broker,
}

impl Running {
    pub fn start(partitions: i32) -> Running {
        let broker = Broker::start();
        let setup = Setup::new(&broker, partitions);
        let work = tempfile::tempdir().unwrap();
        let mut junction = Junction::start(&setup, work.path(), "j");
        junction.wait_ready();
        Running { junction, setup, work, broker }
    }
}
