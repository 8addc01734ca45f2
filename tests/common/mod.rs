//! The one harness every integration test uses: a real broker on loopback
//! ports, the real `junction` binary as a child process, and real Kafka
//! clients to feed it and read what it publishes.
//!
//! The broker is Apache Kafka (single-node KRaft, started by
//! `scripts/kafka/broker.sh`), unless `JUNCTION_TEST_BROKER=nisshi` selects
//! Nisshi, the Kafka-compatible broker without transactions on which the
//! `at_least_once` tests run a second time. Tests of transactions ask for
//! Kafka itself ([`Broker::kafka`]).
#![allow(dead_code)]

pub mod proxy;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, ConfigSource, NewPartitions, NewTopic, ResourceSpecifier, TopicReplication,
};
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

fn cache_dir() -> PathBuf {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    PathBuf::from(std::env::var("JUNCTION_CACHE").unwrap_or_else(|_| format!("{home}/.cache/junction")))
}

fn nisshi_binary() -> PathBuf {
    let p = std::env::var("JUNCTION_NISSHI").map_or_else(|_| cache_dir().join("tools/bin/nisshi"), PathBuf::from);
    assert!(
        p.exists(),
        "the Nisshi broker is not installed at {}; run scripts/setup.sh (or set JUNCTION_NISSHI)",
        p.display()
    );
    p
}

/// Has the process that `command` starts killed when the thread that
/// starts it (the test) ends, however it ends: no broker or junction
/// outlives its test, even one whose test failed while another thread held it.
fn dies_with_the_test(command: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe, as what runs between fork and exec must be.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// The script that formats and runs an Apache Kafka broker.
fn kafka_launcher() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka/broker.sh")
}

/// A record to produce: key and value, either possibly absent.
pub type RawRecord = (Option<Vec<u8>>, Option<Vec<u8>>);

/// Which broker a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Apache Kafka 4.x: the reference, with transactions.
    Kafka,
    /// Nisshi: Kafka-compatible, no transactions (`at_least_once` only).
    Nisshi,
}

impl Kind {
    /// `JUNCTION_TEST_BROKER`: `kafka` (the default) or `nisshi`.
    pub fn from_env() -> Kind {
        match std::env::var("JUNCTION_TEST_BROKER").as_deref() {
            Err(_) | Ok("kafka") | Ok("") => Kind::Kafka,
            Ok("nisshi") => Kind::Nisshi,
            Ok(other) => panic!("JUNCTION_TEST_BROKER={other:?}: expected \"kafka\" or \"nisshi\""),
        }
    }
}

/// Where a Nisshi broker keeps its records (Kafka always keeps them in its log directory).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// Lost when the broker stops.
    Memory,
    /// Kept across a restart (for Nisshi: an SQLite file in the broker's directory).
    Durable,
}

/// A Java program that adds ACLs for `User:junction` with Kafka's admin client.
const ACLS_JAVA: &str = r#"
import java.util.*;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.common.acl.*;
import org.apache.kafka.common.resource.*;

public class Acls {
    public static void main(String[] args) throws Exception {
        Properties props = new Properties();
        props.put("bootstrap.servers", args[0]);
        List<AclBinding> bindings = new ArrayList<>();
        for (int i = 1; i < args.length; i++) {
            String[] f = args[i].split(":");
            bindings.add(new AclBinding(
                new ResourcePattern(ResourceType.valueOf(f[1]), f[2], PatternType.LITERAL),
                new AccessControlEntry("User:junction", "*", AclOperation.valueOf(f[3]), AclPermissionType.valueOf(f[0]))));
        }
        try (Admin admin = Admin.create(props)) {
            admin.createAcls(bindings).all().get();
        }
    }
}
"#;

/// The password of the SCRAM user of a secure broker: tests check that it never leaks.
pub const SECRET_PASSWORD: &str = "s3cret-Pa55word-never-logged";

/// Settings of every test's Kafka broker beyond `scripts/kafka/broker.sh`'s own.
/// - Timed-out transactions are looked for every second, not every 10 s, so
///   that a test whose instance dies in a transaction does not wait long.
/// - Members of `group.protocol=consumer` groups time out after 6 s, like the
///   classic groups' `session.timeout.ms` in [`Setup::config_text`] (for
///   those the broker, not the client, sets it).
const TEST_KAFKA_SETTINGS: &[&str] = &[
    "transaction.abort.timed.out.transaction.cleanup.interval.ms=1000",
    "group.consumer.session.timeout.ms=6000",
    "group.consumer.min.session.timeout.ms=6000",
    "group.consumer.heartbeat.interval.ms=1000",
    "group.consumer.min.heartbeat.interval.ms=1000",
];

/// A broker on loopback ports, killed when dropped.
pub struct Broker {
    child: Option<Child>,
    pub kind: Kind,
    pub port: u16,
    /// Kafka's controller listener.
    controller_port: u16,
    pub bootstrap: String,
    pub dir: tempfile::TempDir,
    storage: Storage,
    /// Broker settings for Kafka (`KEY=VALUE`), beyond the harness's own.
    settings: Vec<String>,
    /// Formats the broker with this SCRAM user (`SCRAM-SHA-256=[name=…,password=…]`).
    scram: Option<String>,
    /// A secure broker's plaintext listener, for the broker's own
    /// connections (its principal, `User:ANONYMOUS`, is a super user when an
    /// authorizer is configured).
    pub internal_bootstrap: Option<String>,
    /// The client properties every client of this broker needs (security).
    pub properties: Vec<(String, String)>,
    runtime: tokio::runtime::Runtime,
}

impl Broker {
    /// The broker that `JUNCTION_TEST_BROKER` selects. (Nisshi keeps its
    /// records in memory; ask for [`Storage::Durable`] to restart it.)
    pub fn start() -> Broker {
        Broker::start_with(Storage::Memory)
    }

    pub fn start_with(storage: Storage) -> Broker {
        Broker::launch(Kind::from_env(), storage, &[])
    }

    /// Apache Kafka, whatever `JUNCTION_TEST_BROKER` says: for tests of transactions.
    pub fn kafka() -> Broker {
        Broker::kafka_with(&[])
    }

    /// Apache Kafka with more broker settings (`KEY=VALUE`).
    pub fn kafka_with(settings: &[&str]) -> Broker {
        Broker::launch(Kind::Kafka, Storage::Durable, settings)
    }

    /// Apache Kafka, listening on `proxy`'s target and advertising the
    /// proxy's port: every client, the broker's own included, reaches it
    /// through the proxy.
    pub fn kafka_through(proxy: &proxy::Proxy) -> Broker {
        let controller = free_port();
        let settings = [
            format!("listeners=PLAINTEXT://127.0.0.1:{},CONTROLLER://127.0.0.1:{controller}", proxy.target),
            format!("advertised.listeners=PLAINTEXT://127.0.0.1:{}", proxy.port),
        ];
        let settings: Vec<&str> = settings.iter().map(String::as_str).collect();
        Broker::launch_on(Kind::Kafka, Storage::Durable, &settings, proxy.port, controller)
    }

    fn launch(kind: Kind, storage: Storage, settings: &[&str]) -> Broker {
        Broker::launch_on(kind, storage, settings, free_port(), free_port())
    }

    fn launch_on(kind: Kind, storage: Storage, settings: &[&str], port: u16, controller_port: u16) -> Broker {
        let mut b = Broker {
            child: None,
            kind,
            port,
            controller_port,
            bootstrap: format!("127.0.0.1:{port}"),
            dir: tempfile::tempdir().unwrap(),
            storage,
            settings: settings.iter().map(|s| s.to_string()).collect(),
            scram: None,
            internal_bootstrap: None,
            properties: Vec::new(),
            runtime: tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap(),
        };
        b.resume();
        b
    }

    /// An Apache Kafka broker whose only client listener serves TLS (a
    /// self-signed certificate made here) and requires SASL/SCRAM-SHA-256 as
    /// user `junction` with [`SECRET_PASSWORD`].
    pub fn start_secure() -> Broker {
        Broker::start_secure_with(&[])
    }

    /// [`Broker::start_secure`] with more broker settings (`KEY=VALUE`).
    /// Its plaintext listener, for the broker's own connections, is
    /// [`Broker::internal_bootstrap`].
    pub fn start_secure_with(more: &[&str]) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let made = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost"])
            .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", "key.pem", "-out", "cert.pem"])
            .current_dir(dir.path())
            .output()
            .expect("run openssl (scripts/setup.sh installs it)");
        assert!(made.status.success(), "openssl: {}", String::from_utf8_lossy(&made.stderr));
        // Kafka's PEM key store: the private key, then its certificate.
        let key = std::fs::read_to_string(dir.path().join("key.pem")).unwrap();
        let cert = std::fs::read_to_string(dir.path().join("cert.pem")).unwrap();
        std::fs::write(dir.path().join("keystore.pem"), format!("{key}{cert}")).unwrap();
        let (port, internal, controller) = (free_port(), free_port(), free_port());
        let settings = vec![
            format!("listeners=SASL_SSL://127.0.0.1:{port},PLAINTEXT://127.0.0.1:{internal},CONTROLLER://127.0.0.1:{controller}"),
            format!("advertised.listeners=SASL_SSL://127.0.0.1:{port},PLAINTEXT://127.0.0.1:{internal}"),
            "sasl.enabled.mechanisms=SCRAM-SHA-256".to_string(),
            "listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;".to_string(),
            "ssl.keystore.type=PEM".to_string(),
            format!("ssl.keystore.location={}", dir.path().join("keystore.pem").display()),
        ]
        .into_iter()
        .chain(more.iter().map(|s| s.to_string()))
        .collect();
        let mut b = Broker {
            child: None,
            kind: Kind::Kafka,
            port,
            controller_port: controller,
            bootstrap: format!("127.0.0.1:{port}"),
            properties: [
                ("security.protocol", "SASL_SSL".to_string()),
                ("sasl.mechanisms", "SCRAM-SHA-256".to_string()),
                ("sasl.username", "junction".to_string()),
                ("sasl.password", SECRET_PASSWORD.to_string()),
                ("ssl.ca.location", dir.path().join("cert.pem").display().to_string()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
            dir,
            storage: Storage::Durable,
            settings,
            internal_bootstrap: Some(format!("127.0.0.1:{internal}")),
            scram: Some(format!("SCRAM-SHA-256=[name=junction,password={SECRET_PASSWORD}]")),
            runtime: tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap(),
        };
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

    /// Starts the broker again on the same ports and storage.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "the broker is running");
        self.child = Some(match self.kind {
            Kind::Kafka => self.spawn_kafka(),
            Kind::Nisshi => spawn_nisshi(self.port, self.dir.path(), self.storage),
        });
        self.wait_ready();
    }

    fn spawn_kafka(&self) -> Child {
        let mut command = Command::new("bash");
        command
            .arg(kafka_launcher())
            .arg(self.dir.path().join("kafka"))
            .args([self.port.to_string(), self.controller_port.to_string()])
            .args(TEST_KAFKA_SETTINGS)
            .args(&self.settings)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(scram) = &self.scram {
            command.env("JUNCTION_BROKER_SCRAM", scram);
        }
        dies_with_the_test(&mut command).spawn().expect("start the Apache Kafka broker (scripts/kafka/broker.sh)")
    }

    /// The broker's log, to read when a test fails.
    pub fn log_path(&self) -> PathBuf {
        match self.kind {
            Kind::Kafka => self.dir.path().join("kafka/broker.log"),
            Kind::Nisshi => self.dir.path().join("broker.log"),
        }
    }

    /// Whether the broker answers with metadata that lists a broker.
    fn lists_a_broker(&self) -> bool {
        let client: BaseConsumer = self.client_config().create().unwrap();
        client.fetch_metadata(None, Duration::from_secs(2)).is_ok_and(|m| !m.brokers().is_empty())
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
                panic!("the broker exited at start-up: {status}; its log:\n{log}");
            }
            if self.lists_a_broker() {
                return;
            }
            assert!(Instant::now() < deadline, "the broker did not answer on {}", self.bootstrap);
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGSTOP: the broker is frozen, its sockets open, answering nothing.
    /// (The Kafka launcher execs the JVM, so the child's PID is the broker's.)
    pub fn freeze(&self) {
        signal(self.pid().expect("the broker is running"), "-STOP");
    }

    /// SIGCONT: a frozen broker goes on where it stopped. Returns once it
    /// lists itself in its metadata again: frozen past its own session, its
    /// controller fences it first, and a client that starts meanwhile is
    /// told of no broker and, from librdkafka 2.10, forgets every one it
    /// knew (librdkafka issue 5301): the next load's producer would never
    /// deliver.
    pub fn thaw(&self) {
        signal(self.pid().expect("the broker is running"), "-CONT");
        wait_until(&format!("the thawed broker to list itself on {}", self.bootstrap), || self.lists_a_broker());
    }

    /// Adds ACLs for the user `junction` through the plaintext listener of
    /// a secure broker, with Kafka's own admin client (a Java source file run
    /// by `java`, with the broker's jars): each `ALLOW|DENY:RESOURCE:NAME:OPERATION`.
    pub fn add_acls(&self, acls: &[&str]) {
        let bootstrap = self.internal_bootstrap.as_ref().expect("a secure broker");
        let source = self.dir.path().join("Acls.java");
        std::fs::write(&source, ACLS_JAVA).unwrap();
        let libs =
            format!("{}/libs/*", std::env::var("JUNCTION_BROKER_HOME").expect("JUNCTION_BROKER_HOME (scripts/env.sh)"));
        let out = Command::new("java").args(["-cp", &libs]).arg(&source).arg(bootstrap).args(acls).output().unwrap();
        assert!(out.status.success(), "adding ACLs: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Whether this broker has transactions (Nisshi has none).
    pub fn has_transactions(&self) -> bool {
        self.kind == Kind::Kafka
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
        self.create_topic_with(name, partitions, &[])
    }

    /// Creates a topic with settings (`cleanup.policy` and the like).
    pub fn create_topic_with(&self, name: &str, partitions: i32, settings: &[(&str, &str)]) {
        let admin: AdminClient<DefaultClientContext> = self.client_config().create().unwrap();
        let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        for (key, value) in settings {
            topic = topic.set(key, value);
        }
        let results = self.runtime.block_on(admin.create_topics([&topic], &AdminOptions::new())).unwrap();
        for r in results {
            r.unwrap_or_else(|(t, e)| panic!("cannot create topic {t}: {e}"));
        }
        self.wait_for_partitions(name, partitions);
    }

    /// Deletes a topic, and waits until the metadata no longer shows it.
    pub fn delete_topic(&self, name: &str) {
        let admin: AdminClient<DefaultClientContext> = self.client_config().create().unwrap();
        let results = self.runtime.block_on(admin.delete_topics(&[name], &AdminOptions::new())).unwrap();
        for r in results {
            r.unwrap_or_else(|(t, e)| panic!("cannot delete topic {t}: {e}"));
        }
        let client: BaseConsumer = self.client_config().create().unwrap();
        wait_until(&format!("topic {name} to be deleted"), || {
            client
                .fetch_metadata(Some(name), Duration::from_secs(5))
                .is_ok_and(|md| md.topics().first().is_none_or(|t| t.error().is_some() || t.partitions().is_empty()))
        });
    }

    /// Grows a topic to `partitions`, as an operator scaling it out would.
    pub fn add_partitions(&self, name: &str, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> = self.client_config().create().unwrap();
        let grow = NewPartitions::new(name, partitions as usize);
        let results = self.runtime.block_on(admin.create_partitions([&grow], &AdminOptions::new())).unwrap();
        for r in results {
            r.unwrap_or_else(|(t, e)| panic!("cannot add partitions to topic {t}: {e}"));
        }
        self.wait_for_partitions(name, partitions);
    }

    /// Sets one of a topic's settings, as an operator would, keeping the
    /// others it has (the admin API replaces a topic's settings whole).
    pub fn set_topic_config(&self, topic: &str, key: &str, value: &str) {
        let admin: AdminClient<DefaultClientContext> = self.client_config().create().unwrap();
        let options = AdminOptions::new();
        let resource = ResourceSpecifier::Topic(topic);
        let described = self.runtime.block_on(admin.describe_configs([&resource], &options)).unwrap();
        let described = described.into_iter().next().unwrap().unwrap();
        let kept: Vec<(String, String)> = described
            .entries
            .into_iter()
            .filter(|e| e.source == ConfigSource::DynamicTopic && e.name != key)
            .filter_map(|e| Some((e.name, e.value?)))
            .collect();
        let mut alter = AlterConfig::new(ResourceSpecifier::Topic(topic));
        for (k, v) in &kept {
            alter = alter.set(k, v);
        }
        alter = alter.set(key, value);
        for r in self.runtime.block_on(admin.alter_configs([&alter], &options)).unwrap() {
            r.unwrap_or_else(|(_, e)| panic!("cannot set {key} of topic {topic}: {e}"));
        }
    }

    /// Waits until the metadata shows every partition of a topic.
    fn wait_for_partitions(&self, name: &str, partitions: i32) {
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

    /// A producer as a user of a librdkafka-based client (Python, Go,
    /// .NET, Node) has one: its default partitioner hashes keys with CRC32,
    /// not murmur2, so most records land off their workflow's home partition.
    pub fn producer(&self) -> BaseProducer {
        self.producer_with(None)
    }

    /// A producer with `partitioner` set (`murmur2_random` partitions as
    /// Java clients do), or librdkafka's default.
    pub fn producer_with(&self, partitioner: Option<&str>) -> BaseProducer {
        let mut c = self.client_config();
        c.set("linger.ms", "5");
        if let Some(p) = partitioner {
            c.set("partitioner", p);
        }
        c.create().unwrap()
    }

    /// Produces records (key, value) to a topic and waits for every delivery.
    pub fn produce(&self, topic: &str, records: &[RawRecord]) {
        self.produce_with(None, topic, records)
    }

    /// Produces records (key, value) with a producer whose partitioner is `partitioner`.
    pub fn produce_with(&self, partitioner: Option<&str>, topic: &str, records: &[RawRecord]) {
        send_all(&self.producer_with(partitioner), topic, records);
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

fn spawn_nisshi(port: u16, dir: &Path, storage: Storage) -> Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("broker.log")).unwrap();
    let url = format!("tcp://127.0.0.1:{port}");
    let engine = match storage {
        Storage::Memory => "memory://nisshi/",
        // Relative to the broker's working directory.
        Storage::Durable => "sqlite://broker.db",
    };
    let mut command = Command::new(nisshi_binary());
    dies_with_the_test(&mut command)
        .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url, "--storage-engine", engine])
        .current_dir(dir)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start the Nisshi broker")
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
    pub fn from_message<M: Message>(m: &M) -> Record {
        let headers = m
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| (h.key.to_string(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned()))
                    .collect()
            })
            .unwrap_or_default();
        Record {
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            value: m.payload().map(<[u8]>::to_vec),
            headers,
            timestamp_ms: m.timestamp().to_millis().unwrap_or(0),
        }
    }

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

    /// Reads until each of `workflows` workflows has an outcome, then what
    /// else arrives within `settle` (repeats, if any).
    pub fn every_outcome(&mut self, workflows: usize, settle: Duration) -> Vec<Record> {
        self.read_until("every outcome", |r| by_workflow(r).len() >= workflows);
        self.read_for(settle).to_vec()
    }

    /// Reads whatever arrives within `window`: to check that nothing more comes.
    pub fn read_for(&mut self, window: Duration) -> &[Record] {
        let end = Instant::now() + window;
        while Instant::now() < end {
            self.poll(Duration::from_millis(100));
        }
        &self.records
    }

    /// Reads what arrives within `wait`, and then whatever else is already
    /// there (up to a batch), so that the callers' checks run once a batch.
    fn poll(&mut self, wait: Duration) {
        let mut next = self.consumer.poll(wait);
        let mut read = 0;
        while let Some(m) = next {
            self.records.push(Record::from_message(&m.unwrap()));
            read += 1;
            if read == 10_000 {
                break;
            }
            next = self.consumer.poll(Duration::ZERO);
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

/// Fails when `j`'s log holds a panic.
pub fn assert_no_panic(j: &Junction, name: &str) {
    let log = j.logs();
    assert!(!log.contains("panicked"), "{name}'s log holds a panic:\n{log}");
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

/// `len` hex digits that do not compress (xorshift), so that the state's
/// files are as large as its payloads.
pub fn noise(seed: u64, len: usize) -> String {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from_digit((x % 16) as u32, 16).expect("a hex digit")
        })
        .collect()
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
    /// Input topics beside `input`, and their `[kafka.mappings.*]` tables.
    pub more_inputs: Vec<String>,
    pub mappings: String,
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
    /// The consumer group protocol: `classic` (cooperative-sticky) or
    /// `consumer` (KIP-848); `classic-defaults` is the classic protocol
    /// with librdkafka's own session timeout (45 s), not the tests' 6 s.
    pub group_protocol: &'static str,
    /// More lines for the `[kafka]` section.
    pub kafka_options: String,
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
            more_inputs: Vec::new(),
            mappings: String::new(),
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
            group_protocol: "classic",
            kafka_options: String::new(),
        }
    }

    pub fn config_text(&self, state_dir: &Path, http_port: u16) -> String {
        format!(
            r#"
[kafka]
bootstrap_servers = "{bootstrap}"
application_id = "{app}"
input_topics = [{inputs}]
output_topic = "{output}"
dead_letter_topic = "{dlq}"
processing_guarantee = "{guarantee}"
commit_interval = "{interval}"
{kafka_options}
[kafka.properties]
"topic.metadata.refresh.interval.ms" = "1000"
{group}
{properties}
{mappings}
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
            inputs = std::iter::once(&self.input)
                .chain(&self.more_inputs)
                .map(|t| format!("{t:?}"))
                .collect::<Vec<_>>()
                .join(", "),
            mappings = self.mappings,
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
            group = self.group_properties(),
            kafka_options = self.kafka_options,
        )
    }

    /// A member killed with -9 leaves the group when its session times out:
    /// after 6 s. A classic group's members ask for it; a consumer group's
    /// broker sets it (see `TEST_KAFKA_SETTINGS`).
    fn group_properties(&self) -> String {
        match self.group_protocol {
            "classic" => "\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"1000\"".to_string(),
            // As a user who sets nothing has it: librdkafka's 45 s session.
            "classic-defaults" => String::new(),
            protocol => format!("\"group.protocol\" = {protocol:?}"),
        }
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

/// The junction binary the tests and benchmarks run: this build's, or, for a
/// benchmark comparing two builds in the same hour, the one named by
/// `JUNCTION_BENCH_BINARY` (a copy of another build's).
pub fn junction_binary() -> PathBuf {
    std::env::var_os("JUNCTION_BENCH_BINARY")
        .map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_junction")), PathBuf::from)
}

/// A running `junction run` process, killed when dropped.
pub struct Junction {
    child: Option<Child>,
    pub state_dir: PathBuf,
    pub http_port: u16,
    pub log: PathBuf,
    config: PathBuf,
    extra_env: Vec<(String, String)>,
    /// The host name it runs under, when not this machine's.
    host: Option<String>,
}

impl Junction {
    /// Starts junction with its own state directory inside `work`.
    pub fn start(setup: &Setup, work: &Path, name: &str) -> Junction {
        Junction::start_with_env(setup, work, name, &[])
    }

    pub fn start_with_env(setup: &Setup, work: &Path, name: &str, env: &[(&str, &str)]) -> Junction {
        Junction::launch(setup, work, name, env, &work.join(format!("{name}-state")))
    }

    /// Starts two instances, `a` and `b`, and waits until they share every
    /// partition between them and both are ready.
    pub fn start_two(setup: &Setup, work: &Path) -> (Junction, Junction) {
        let mut a = Junction::start(setup, work, "a");
        let mut b = Junction::start(setup, work, "b");
        wait_until("the partitions shared between a and b", || {
            let (pa, pb) = (a.assigned(), b.assigned());
            !pa.is_empty() && !pb.is_empty() && pa.len() + pb.len() == setup.partitions as usize
        });
        a.wait_ready();
        b.wait_ready();
        (a, b)
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
            host: None,
        };
        j.spawn();
        j
    }

    /// Writes `setup`'s configuration over this instance's, for its next
    /// start: an operator's edit between restarts.
    pub fn reconfigure(&self, setup: &Setup) {
        std::fs::write(&self.config, setup.config_text(&self.state_dir, self.http_port)).unwrap();
    }

    /// `junction validate` of this instance's configuration: its exit code and its output.
    pub fn validate(&self) -> (Option<i32>, String) {
        let out = Command::new(junction_binary()).args(["validate", "--config"]).arg(&self.config).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        (out.status.code(), text)
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let mut command = match &self.host {
            None => Command::new(junction_binary()),
            // unshare and sh both exec: the child's PID is junction's.
            Some(host) => {
                let mut c = Command::new("unshare");
                c.args(["--uts", "sh", "-c", "hostname \"$0\" && exec \"$@\"", host]).arg(junction_binary());
                c
            }
        };
        let child = dies_with_the_test(&mut command)
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
            let _ = c.kill();
            let _ = c.wait();
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

    /// Sets an environment variable for the next start (a configuration override).
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.extra_env.retain(|(k, _)| k != key);
        self.extra_env.push((key.to_string(), value.to_string()));
    }

    /// Starts the process again after a kill, with the same state directory and port.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "still running");
        self.spawn();
    }

    /// Starts the process again, with the same state directory, on a host
    /// of another name (in a UTS namespace of its own): a container
    /// re-created with its volume. Needs root, as `.ci/run` has.
    pub fn start_again_on_host(&mut self, host: &str) {
        assert!(self.child.is_none(), "still running");
        self.host = Some(host.to_string());
        self.spawn();
    }

    /// SIGSTOP: the process is frozen, as in a long pause, and keeps every socket open.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT: a frozen process goes on where it stopped.
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    /// Sends the signal `name` (`-STOP`, `-TERM`, ...) and returns at once.
    pub fn signal(&self, name: &str) {
        signal(self.pid().expect("junction is running"), name);
    }

    /// Stops the stream thread alone (`junction-stream`) for `duration`
    /// (up to an hour), as a stream thread stuck in a long call would be,
    /// while librdkafka's threads go on: gdb attaches and has the stream
    /// thread call libc's `usleep` (a Rust `sleep` has the name too), which lets every other thread run until it
    /// returns, then detaches. Returns once the thread is about to stall;
    /// the returned process ends when it runs again.
    pub fn stall_stream_thread(&self, duration: Duration) -> Child {
        let script = format!(
            r#"
stream = [t for t in gdb.selected_inferior().threads() if t.name == "junction-stream"]
assert stream, "no junction-stream thread"
stream[0].switch()
print("stalled", flush=True)
# The call runs in the stream thread alone; the others run meanwhile.
gdb.execute("call (int) usleep({micros})")
"#,
            micros = duration.as_micros()
        );
        let (gdb, output) = self.debug("stall", &script);
        wait_until("gdb to stop the stream thread", || {
            std::fs::read_to_string(&output).unwrap_or_default().contains("stalled")
        });
        gdb
    }

    /// Has the stream thread stop for `duration` where it starts to leave
    /// the group (librdkafka's `rd_kafka_consumer_close_queue`), while
    /// librdkafka's threads go on, as [`Junction::stall_stream_thread`]
    /// does. Returns once gdb waits for that moment, with a check of
    /// whether it has come.
    pub fn stall_in_close(&self, duration: Duration) -> (Child, impl Fn() -> bool) {
        let script = format!(
            r#"
gdb.execute("break rd_kafka_consumer_close_queue")
print("waiting", flush=True)
gdb.execute("continue")
print("closing", flush=True)
gdb.execute("delete")
gdb.execute("call (int) usleep({micros})")
"#,
            micros = duration.as_micros()
        );
        let (gdb, output) = self.debug("close", &script);
        let said = move |what: &str| std::fs::read_to_string(&output).unwrap_or_default().contains(what);
        wait_until("gdb to wait for the close", || said("waiting"));
        (gdb, move || said("closing"))
    }

    /// Runs the gdb Python `script` against the process, attached first and
    /// detached last; returns gdb and the file of its output.
    fn debug(&self, name: &str, script: &str) -> (Child, PathBuf) {
        let pid = self.pid().expect("junction is running");
        let path = self.log.with_extension(format!("{name}.py"));
        let script = format!(
            r#"
import gdb
gdb.execute("set pagination off")
gdb.execute("set confirm off")
# The other threads' signals neither stop them nor end the call.
gdb.execute("handle all nostop print pass")
gdb.execute("set unwindonsignal on")
gdb.execute("attach {pid}")
{script}
gdb.execute("detach")
"#
        );
        std::fs::write(&path, script).unwrap();
        let output = self.log.with_extension(format!("{name}.log"));
        let file = std::fs::File::create(&output).unwrap();
        let gdb = Command::new("gdb")
            .args(["-q", "-nx", "-batch", "-x"])
            .arg(&path)
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("gdb (scripts/setup.sh installs it)");
        (gdb, output)
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

    /// The partitions it holds, as `/readyz` lists them.
    pub fn assigned(&self) -> Vec<i32> {
        self.readyz_list("assigned")
    }

    /// The partitions it is restoring, as `/readyz` lists them.
    pub fn restoring(&self) -> Vec<i32> {
        self.readyz_list("restoring")
    }

    fn readyz_list(&self, field: &str) -> Vec<i32> {
        let body = self.get("/readyz").map(|(_, b)| b).unwrap_or_default();
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        v[field].as_array().map(|a| a.iter().filter_map(|p| p.as_i64().map(|p| p as i32)).collect()).unwrap_or_default()
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

/// Sends `signal` (`-STOP`, `-CONT`) to process `pid`.
fn signal(pid: u32, signal: &str) {
    let pid = pid.to_string();
    assert!(Command::new("kill").args([signal, &pid]).status().unwrap().success(), "kill {signal} {pid}");
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

/// A topic's records as one client sees them, read to the end the topic had
/// when the read began: with `read_committed` only committed transactions'
/// records, with `read_uncommitted` aborted ones too.
pub fn read_to_end(broker: &Broker, topic: &str, isolation: &str) -> Vec<Record> {
    let consumer: BaseConsumer = broker
        .client_config()
        .set("group.id", unique("to-end"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", isolation)
        .create()
        .unwrap();
    let partitions = broker.partition_count(topic) as i32;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let marks: Vec<(i64, i64)> =
        (0..partitions).map(|p| consumer.fetch_watermarks(topic, p, Duration::from_secs(10)).unwrap()).collect();
    let ends: Vec<i64> = marks.iter().map(|(_, high)| *high).collect();
    // An empty partition has nothing to read (and no position to reach).
    let mut at_end: std::collections::HashSet<i32> =
        (0..partitions).filter(|&p| marks[p as usize].0 >= marks[p as usize].1).collect();
    let mut records = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    while at_end.len() < partitions as usize {
        assert!(Instant::now() < deadline, "timed out reading {topic} to its end ({isolation})");
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => records.push(Record::from_message(&m)),
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                let position = consumer.position().unwrap();
                if let Some(Offset::Offset(o)) = position.find_partition(topic, p).map(|e| e.offset()) {
                    if o >= ends[p as usize] {
                        at_end.insert(p);
                    }
                }
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => {}
        }
    }
    records
}

/// Each partition's last stable offset (what `read_committed` readers may
/// read up to) and high watermark: a transaction is open on a partition
/// while the first is behind the second.
pub fn watermarks(broker: &Broker, topic: &str) -> Vec<(i64, i64)> {
    let client = |isolation: &str| -> BaseConsumer {
        broker.client_config().set("isolation.level", isolation).create().unwrap()
    };
    let (committed, uncommitted) = (client("read_committed"), client("read_uncommitted"));
    (0..broker.partition_count(topic) as i32)
        .map(|p| {
            let stable = committed.fetch_watermarks(topic, p, Duration::from_secs(10)).unwrap().1;
            let high = uncommitted.fetch_watermarks(topic, p, Duration::from_secs(10)).unwrap().1;
            (stable, high)
        })
        .collect()
}

/// Whether a transaction is open on any partition of `topic`.
pub fn transaction_open(broker: &Broker, topic: &str) -> bool {
    watermarks(broker, topic).iter().any(|(stable, high)| stable < high)
}

/// Freezes `junction` (SIGSTOP) in the middle of a transaction that has
/// written to `topic`: tried at random moments until a freeze catches a
/// partition whose last stable offset stays behind its high watermark and
/// does not move for a while. Another instance's transactions on the topic
/// keep committing, so they move it; the frozen one's, and markers on their
/// way, would not.
pub fn freeze_in_open_transaction(junction: &Junction, broker: &Broker, topic: &str) {
    let deadline = Instant::now() + PATIENCE;
    let mut tries = 0u64;
    loop {
        assert!(Instant::now() < deadline, "no freeze caught a transaction open on {topic} in {tries} tries");
        tries += 1;
        junction.freeze();
        let before = watermarks(broker, topic);
        if before.iter().any(|(stable, high)| stable < high) {
            std::thread::sleep(Duration::from_millis(500));
            let after = watermarks(broker, topic);
            if before.iter().zip(&after).any(|((s0, h0), (s1, _))| s0 < h0 && s1 == s0) {
                return;
            }
        }
        junction.thaw();
        std::thread::sleep(Duration::from_millis(7 * (tries % 11)));
    }
}

/// Every store in `stores` (state directory, partition) holds exactly the
/// last committed changelog record of each of its workflows: nothing from
/// an aborted transaction, and nothing older than what the changelog holds.
/// The stores must be closed (junction stopped).
pub fn assert_stores_match_the_committed_changelog(broker: &Broker, setup: &Setup, stores: &[(PathBuf, i32)]) {
    let changelog = format!("{}-state-changelog", setup.app);
    let mut last: HashMap<(i32, Vec<u8>), Option<Vec<u8>>> = HashMap::new();
    for r in read_to_end(broker, &changelog, "read_committed") {
        last.insert((r.partition, r.key.clone().unwrap_or_default()), r.value.clone());
    }
    let memory = junction::state::StoreMemory::new(16 << 20, 4 << 20);
    for (dir, partition) in stores {
        let path = dir.join(&setup.app).join(partition.to_string());
        let store = junction::state::Store::open(&path, &memory).unwrap();
        let mut held: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
        store
            .for_each_state(|id, state| {
                held.insert(id.to_vec(), state.to_vec());
            })
            .unwrap();
        let definitions = store.definitions().unwrap();
        let mut logged_definitions = 0;
        for ((p, id), value) in last.iter().filter(|((p, _), _)| p == partition) {
            match junction::state::ChangelogKey::reserved(id) {
                Some(junction::state::ChangelogKey::Clock) => {
                    let clock = value.as_ref().map(|v| i64::from_be_bytes(v.as_slice().try_into().unwrap()));
                    assert_eq!(
                        store.clock().unwrap(),
                        clock,
                        "partition {p}: the store's clock and the changelog's differ"
                    );
                    continue;
                }
                Some(junction::state::ChangelogKey::Definition(d)) => {
                    let logged = value.as_deref().map(|v| junction::state::codec::decode_definition(v).unwrap());
                    assert_eq!(
                        definitions.get(d),
                        logged.as_ref(),
                        "partition {p}: the store's definition {d:?} and the changelog's differ"
                    );
                    logged_definitions += 1;
                    continue;
                }
                _ => {}
            }
            let name = String::from_utf8_lossy(id);
            assert_eq!(
                held.get(id),
                value.as_ref(),
                "partition {p}: the store at {} and the committed changelog differ on {name}",
                path.display()
            );
        }
        assert_eq!(
            definitions.len(),
            logged_definitions,
            "partition {partition}: the store holds definitions no committed changelog record has"
        );
        for id in held.keys() {
            assert!(
                last.contains_key(&(*partition, id.clone())),
                "partition {partition}: the store holds {}, which no committed changelog record has",
                String::from_utf8_lossy(id)
            );
        }
    }
}

/// Sends records (key, value) to a topic through `producer` and waits for every delivery.
pub fn send_all(producer: &BaseProducer, topic: &str, records: &[RawRecord]) {
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

/// A steady load on the input topic until stopped: windows of 50 order
/// workflows, their steps interleaved, 5% of them failing a step, and one
/// bad record per window, through one producer, as a service has.
pub struct Load {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<(usize, usize)>>,
}

impl Load {
    pub fn start(broker: &Arc<Broker>, topic: &str, prefix: &str) -> Load {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = {
            let (producer, stop, topic, prefix) =
                (broker.producer(), Arc::clone(&stop), topic.to_string(), prefix.to_string());
            std::thread::spawn(move || {
                let (mut workflows, mut bad) = (0, 0);
                while !stop.load(Ordering::SeqCst) {
                    let mut records: Vec<RawRecord> = Vec::new();
                    for step in ["payment", "inventory", "fraud_check"] {
                        for w in workflows..workflows + 50 {
                            let id = format!("{prefix}-{w}");
                            let status = if w % 20 == 7 && step == "inventory" { "failed" } else { "succeeded" };
                            let e = event(&id, "order", step, status, Some(&format!("{id}-{step}")));
                            records.push((Some(id.into_bytes()), Some(serde_json::to_vec(&e).unwrap())));
                        }
                    }
                    records.push((Some(format!("{prefix}-bad-{bad}").into_bytes()), Some(b"{not json".to_vec())));
                    send_all(&producer, &topic, &records);
                    workflows += 50;
                    bad += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                (workflows, bad)
            })
        };
        Load { stop, thread: Some(thread) }
    }

    /// Stops the load; returns the workflows and bad records it produced.
    pub fn finish(mut self) -> (usize, usize) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        // Joined, so that a failing test's load stops with the test.
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The changelog records of `topic` as a `read_committed` reader sees them,
/// by partition, in offset order.
fn committed_changelog(broker: &Broker, setup: &Setup) -> HashMap<i32, Vec<Record>> {
    let changelog = format!("{}-state-changelog", setup.app);
    let mut by_partition: HashMap<i32, Vec<Record>> = HashMap::new();
    for r in read_to_end(broker, &changelog, "read_committed") {
        by_partition.entry(r.partition).or_default().push(r);
    }
    by_partition
}

/// Every store under each of `state_dirs` holds exactly what the committed
/// changelog held at the store's checkpoint: for each key, the last record
/// before the checkpoint, and nothing else. A store written after its
/// instance lost the partition (a zombie's write), or one whose changelog
/// records landed after another owner's, fails this. The stores of
/// `owners` (state directory, partition) must also be at the changelog's
/// end: the last owner of a partition, stopped cleanly, holds its latest
/// state. The stores must be closed (junction stopped).
pub fn assert_stores_hold_the_changelog_at_their_checkpoints(
    broker: &Broker,
    setup: &Setup,
    state_dirs: &[PathBuf],
    owners: &[(PathBuf, i32)],
) -> usize {
    let changelog = committed_changelog(broker, setup);
    let memory = junction::state::StoreMemory::new(16 << 20, 4 << 20);
    let mut checked = 0;
    for dir in state_dirs {
        let app_dir = dir.join(&setup.app);
        let Ok(entries) = std::fs::read_dir(&app_dir) else { continue };
        for entry in entries {
            let path = entry.unwrap().path();
            let Some(partition) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            let store = junction::state::Store::open(&path, &memory).unwrap();
            let Some(checkpoint) = store.checkpoint().unwrap() else {
                assert!(!store.has_state(), "{} holds state without a checkpoint", path.display());
                continue;
            };
            let records = changelog.get(&partition).map(Vec::as_slice).unwrap_or_default();
            let mut expected: HashMap<Vec<u8>, Option<Vec<u8>>> = HashMap::new();
            for r in records.iter().filter(|r| r.offset < checkpoint) {
                expected.insert(r.key.clone().unwrap_or_default(), r.value.clone());
            }
            if owners.contains(&(dir.clone(), partition)) {
                let last = records.last().map_or(0, |r| r.offset + 1);
                assert!(
                    checkpoint >= last,
                    "{}: the last owner's store stops at {checkpoint}, before the changelog's last record ({})",
                    path.display(),
                    last - 1
                );
            }
            let mut held: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
            store.for_each_state(|id, state| drop(held.insert(id.to_vec(), state.to_vec()))).unwrap();
            let definitions = store.definitions().unwrap();
            let mut logged_definitions = 0;
            for (id, value) in &expected {
                match junction::state::ChangelogKey::reserved(id) {
                    Some(junction::state::ChangelogKey::Clock) => {
                        let clock = value.as_ref().map(|v| i64::from_be_bytes(v.as_slice().try_into().unwrap()));
                        assert_eq!(store.clock().unwrap(), clock, "{}: the clock differs", path.display());
                    }
                    Some(junction::state::ChangelogKey::Definition(d)) => {
                        let logged = value.as_deref().map(|v| junction::state::codec::decode_definition(v).unwrap());
                        assert_eq!(definitions.get(d), logged.as_ref(), "{}: definition {d:?} differs", path.display());
                        logged_definitions += 1;
                    }
                    _ => assert_eq!(
                        held.get(id),
                        value.as_ref(),
                        "{}: the store differs from the changelog at its checkpoint {checkpoint} on {}",
                        path.display(),
                        String::from_utf8_lossy(id)
                    ),
                }
            }
            assert_eq!(definitions.len(), logged_definitions, "{}: definitions no record has", path.display());
            for id in held.keys() {
                assert!(
                    expected.contains_key(id),
                    "{}: the store holds {}, which the changelog did not hold at its checkpoint {checkpoint}",
                    path.display(),
                    String::from_utf8_lossy(id)
                );
            }
            checked += 1;
        }
    }
    checked
}
