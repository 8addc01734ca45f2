//! The Kafka Streams peer (`benches/peers/kafka-streams`): the same join as
//! a Kafka Streams application, run as its own JVM process with the
//! settings BENCHMARKS.md lists ("What each side runs with"). Built by
//! `scripts/setup.sh peer` into `$JUNCTION_PEER_BUILD`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{Broker, Setup};

/// A running peer process, killed when dropped.
pub struct Peer {
    child: Option<Child>,
    properties: PathBuf,
    log: PathBuf,
}

/// Where `scripts/setup.sh peer` built the peer: its classes and `lib/`.
fn build_dir() -> PathBuf {
    PathBuf::from(std::env::var("JUNCTION_PEER_BUILD").expect("JUNCTION_PEER_BUILD (scripts/env.sh)"))
}

impl Peer {
    /// Starts the peer as application `setup.app`, reading `setup.input`
    /// and `setup.more_inputs`, and writing `setup.output` and `setup.dead_letters`, which are
    /// created here (Kafka Streams creates only its internal topics).
    pub fn start(broker: &Broker, setup: &Setup, work: &Path, name: &str) -> Peer {
        for topic in [&setup.output, &setup.dead_letters] {
            broker.create_topic(topic, setup.partitions);
        }
        let guarantee = match setup.guarantee {
            "exactly_once" => "exactly_once_v2",
            other => other,
        };
        let inputs: Vec<&str> = std::iter::once(&setup.input).chain(&setup.more_inputs).map(String::as_str).collect();
        let inputs = inputs.join(",");
        let mut settings: Vec<(String, String)> = [
            ("bootstrap.servers", setup.bootstrap.as_str()),
            ("application.id", setup.app.as_str()),
            ("processing.guarantee", guarantee),
            ("state.dir", &work.join(format!("{name}-state")).display().to_string()),
            // junction's commit interval, whatever the guarantee (Kafka
            // Streams' default is 100 ms under exactly_once_v2, 30 s otherwise).
            ("commit.interval.ms", "100"),
            // Both of the machine's cores: 4 tasks over 2 threads.
            ("num.stream.threads", "2"),
            // The record cache: writes to the same workflow within a commit
            // interval reach RocksDB and the changelog once.
            ("statestore.cache.max.bytes", &(64u64 << 20).to_string()),
            ("rocksdb.config.setter", "dev.junction.peer.BoundedRocksDb"),
            // junction's client settings (kafka::consumer_config, producer_config).
            ("producer.linger.ms", "5"),
            ("producer.compression.type", "lz4"),
            ("producer.batch.size", "262144"),
            ("consumer.fetch.min.bytes", "100000"),
            ("consumer.fetch.max.wait.ms", "10"),
            ("consumer.max.poll.records", "2000"),
            // The harness's group timing, as junction's in these benchmarks.
            ("consumer.session.timeout.ms", "6000"),
            ("consumer.heartbeat.interval.ms", "1000"),
            ("replication.factor", "1"),
            ("peer.input", inputs.as_str()),
            ("peer.output", setup.output.as_str()),
            ("peer.dead_letters", setup.dead_letters.as_str()),
            ("peer.workflows", "order:payment,inventory,fraud_check"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        // BENCH_PEER_PROPERTIES="key=value;key=value" overrides any of them.
        for pair in std::env::var("BENCH_PEER_PROPERTIES").unwrap_or_default().split(';').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').expect("BENCH_PEER_PROPERTIES: key=value;key=value");
            settings.retain(|(key, _)| key != k);
            settings.push((k.to_string(), v.to_string()));
        }
        let properties = work.join(format!("{name}.properties"));
        let text: String = settings.iter().map(|(k, v)| format!("{k}={}\n", v.replace('\\', "\\\\"))).collect();
        std::fs::write(&properties, text).unwrap();
        let mut peer = Peer { child: None, properties, log: work.join(format!("{name}.log")) };
        peer.spawn();
        peer
    }

    fn spawn(&mut self) {
        let build = build_dir();
        let classpath = format!("{}:{}/*", build.join("classes").display(), build.join("lib").display());
        let log = std::fs::File::create(&self.log).unwrap();
        let heap = std::env::var("BENCH_PEER_HEAP").unwrap_or_else(|_| "1g".to_string());
        // BENCH_PEER_JVM: more JVM options, space-separated (a collector, say).
        let jvm = std::env::var("BENCH_PEER_JVM").unwrap_or_default();
        let child = Command::new("java")
            .args([format!("-Xms{heap}"), format!("-Xmx{heap}")])
            .args(jvm.split_whitespace())
            .args(["-cp", &classpath, "dev.junction.peer.JoinPeer"])
            .arg(&self.properties)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start the Kafka Streams peer (java)");
        self.child = Some(child);
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether every task is running: the last state it printed is RUNNING.
    pub fn ready(&mut self) -> bool {
        if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
            panic!("the Kafka Streams peer exited ({status}); its log:\n{}", self.logs());
        }
        self.logs().lines().rev().find(|l| l.starts_with("peer: ")).is_some_and(|l| l == "peer: RUNNING")
    }

    /// SIGTERM (Kafka Streams closes cleanly), then waits for the exit.
    pub fn terminate(&mut self) -> bool {
        let Some(mut c) = self.child.take() else { return false };
        Command::new("kill").args(["-TERM", &c.id().to_string()]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                // The JVM exits 143 after its shutdown hooks ran on SIGTERM.
                return status.success() || status.code() == Some(143);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
