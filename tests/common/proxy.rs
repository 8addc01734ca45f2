//! A TCP proxy in front of the broker, which the broker advertises as its
//! address, so that every client reaches it only through here: it passes
//! every byte both ways, unless told to lose a transaction's commit
//! answer. Then the next `EndTxn` request reaches the broker, which ends
//! the transaction, but its answer never reaches the client; and no new
//! connection reaches the broker until the test lets them again. The
//! producer that sent it cannot learn, within its own timeout, that its
//! transaction committed: what a broker stalled or a network cut at that
//! moment does in production.
//!
//! Told to, it also answers `Metadata` requests with no broker in them, as a
//! broker does while its controller has fenced it (frozen past its own
//! session, or restarting): what makes a librdkafka client forget every
//! broker it knew (librdkafka issue 5301): to every client, or to those
//! whose `client.id` ends as told. The answers are otherwise the broker's.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The Kafka protocol's key of `EndTxn`, the request that commits or aborts a transaction.
const END_TXN: i16 = 26;
/// The Kafka protocol's key of `Metadata`.
const METADATA: i16 = 3;
/// The first version of `Metadata` in the protocol's compact ("flexible") encoding.
const METADATA_FLEXIBLE: i16 = 9;

pub struct Proxy {
    /// Where clients connect: the broker's advertised port.
    pub port: u16,
    /// Where the broker listens.
    pub target: u16,
    state: Arc<State>,
}

#[derive(Default)]
struct State {
    /// The next `EndTxn` request's answer is lost.
    armed: AtomicBool,
    /// Whether that has happened.
    lost: AtomicBool,
    /// New connections are closed at once.
    refusing: AtomicBool,
    /// `Metadata` answers list no broker.
    fenced: AtomicBool,
    /// Only the clients whose `client.id` ends so are answered as fenced.
    fenced_clients: Mutex<String>,
    /// How many answers listed none.
    fenced_answers: AtomicUsize,
    /// Every connection, closed when the proxy is dropped.
    streams: Mutex<Vec<TcpStream>>,
}

impl Proxy {
    /// Listens on a free loopback port, for a broker that will listen on `target`.
    pub fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(State::default());
        let accepting = Arc::clone(&state);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if accepting.refusing.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(broker) = TcpStream::connect(("127.0.0.1", target)) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                connect(&accepting, client, broker);
            }
        });
        Proxy { port, target, state }
    }

    /// The next transaction commit's answer is lost (see the module).
    pub fn lose_next_commit_answer(&self) {
        self.state.armed.store(true, Ordering::SeqCst);
    }

    /// Whether a commit's answer was lost.
    pub fn lost_a_commit_answer(&self) -> bool {
        self.state.lost.load(Ordering::SeqCst)
    }

    /// New connections reach the broker again.
    pub fn let_connections_through(&self) {
        self.state.refusing.store(false, Ordering::SeqCst);
    }

    /// From now on, and until [`Proxy::unfence`], every `Metadata` answer
    /// to a client whose `client.id` ends with `suffix` (every answer, for
    /// "") lists no broker (its topics are left as they are), as a fenced
    /// broker's do. junction names each of its clients by its role.
    pub fn fence(&self, suffix: &str) {
        *self.state.fenced_clients.lock().unwrap() = suffix.to_string();
        self.state.fenced.store(true, Ordering::SeqCst);
    }

    /// Closes every connection and refuses new ones until
    /// [`Proxy::let_connections_through`], as a broker that stopped does.
    pub fn cut_connections(&self) {
        let mut streams = self.state.streams.lock().unwrap();
        self.state.refusing.store(true, Ordering::SeqCst);
        for s in streams.drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    pub fn unfence(&self) {
        self.state.fenced.store(false, Ordering::SeqCst);
    }

    /// Stages a broker's restart as its clients see it: every connection is
    /// cut, none is taken for 8 s, then the broker answers `Metadata` as one
    /// not yet unfenced does, for 20 s: long enough for every client to have
    /// connected again (librdkafka waits up to `reconnect.backoff.max.ms`,
    /// 10 s, between attempts, and more with its jitter) and been told so.
    pub fn restart_answering_as_fenced(&self) {
        self.restart_answering_as_fenced_to("");
    }

    /// [`Proxy::restart_answering_as_fenced`], the fenced answers going only
    /// to the clients whose `client.id` ends with `suffix`.
    pub fn restart_answering_as_fenced_to(&self, suffix: &str) {
        self.cut_connections();
        std::thread::sleep(Duration::from_secs(8));
        self.fence(suffix);
        self.let_connections_through();
        std::thread::sleep(Duration::from_secs(20));
        assert!(self.fenced_answers() > 0, "no client asked for metadata while the broker answered as fenced");
        self.unfence();
    }

    /// How many `Metadata` answers listed no broker.
    pub fn fenced_answers(&self) -> usize {
        self.state.fenced_answers.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        for s in self.state.streams.lock().unwrap().iter() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

/// Passes one client's connection to the broker and back, each way on a thread of its own.
fn connect(state: &Arc<State>, client: TcpStream, broker: TcpStream) {
    let clones = || {
        Ok::<_, std::io::Error>([client.try_clone()?, broker.try_clone()?, client.try_clone()?, broker.try_clone()?])
    };
    let Ok([kept_client, kept_broker, from_client, to_broker]) = clones() else { return };
    {
        // Under the lock cut_connections drains: a connection accepted just
        // before a cut is either cut with the others or closed here.
        let mut streams = state.streams.lock().unwrap();
        if state.refusing.load(Ordering::SeqCst) {
            let _ = client.shutdown(Shutdown::Both);
            let _ = broker.shutdown(Shutdown::Both);
            return;
        }
        streams.extend([kept_client, kept_broker]);
    }
    for s in [&client, &broker] {
        let _ = s.set_nodelay(true);
    }
    let connection = Arc::new(Connection::default());
    let (requests, answers) = (Arc::clone(state), Arc::clone(state));
    let asked = Arc::clone(&connection);
    std::thread::spawn(move || pass_requests(&requests, &asked, from_client, to_broker));
    std::thread::spawn(move || pass_answers(&answers, &connection, broker, client));
}

/// What one connection's two threads share.
#[derive(Default)]
struct Connection {
    /// Its answers are no longer passed.
    silenced: AtomicBool,
    /// The `Metadata` requests not yet answered: correlation ID, then
    /// version and client ID.
    metadata: Mutex<HashMap<i32, (i16, String)>>,
}

/// Reads one size-prefixed request or answer whole: its size, then it.
fn read_frame(from: &mut TcpStream) -> Option<Vec<u8>> {
    let mut size = [0u8; 4];
    from.read_exact(&mut size).ok()?;
    let mut frame = size.to_vec();
    frame.resize(4 + i32::from_be_bytes(size).max(0) as usize, 0);
    from.read_exact(&mut frame[4..]).ok()?;
    Some(frame)
}

/// Passes each request whole, and reads its header: once armed, an
/// `EndTxn` silences its connection's answers from then on; a `Metadata`
/// request is noted, for its answer.
fn pass_requests(state: &State, connection: &Connection, mut from: TcpStream, mut to: TcpStream) {
    // Each request is sent in one write.
    while let Some(request) = read_frame(&mut from) {
        let field = |at: usize| request.get(at..at + 2).map(|k| i16::from_be_bytes([k[0], k[1]]));
        let key = field(4);
        if let (Some(METADATA), Some(version), Some(id)) = (key, field(6), request.get(8..12)) {
            let id = i32::from_be_bytes(id.try_into().unwrap());
            // The header's client ID: a nullable string (its length, then it).
            let client = field(12)
                .and_then(|n| request.get(14..14 + n.max(0) as usize))
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            connection.metadata.lock().unwrap().insert(id, (version, client));
        }
        if key == Some(END_TXN) && state.armed.swap(false, Ordering::SeqCst) {
            connection.silenced.store(true, Ordering::SeqCst);
            state.refusing.store(true, Ordering::SeqCst);
            state.lost.store(true, Ordering::SeqCst);
        }
        if to.write_all(&request).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
}

/// Passes the broker's answers, but none once the connection is silenced,
/// and those to `Metadata` without their brokers while fenced.
fn pass_answers(state: &State, connection: &Connection, mut from: TcpStream, mut to: TcpStream) {
    while let Some(mut answer) = read_frame(&mut from) {
        if connection.silenced.load(Ordering::SeqCst) {
            continue;
        }
        let id = answer.get(4..8).map(|id| i32::from_be_bytes(id.try_into().unwrap()));
        let asked = id.and_then(|id| connection.metadata.lock().unwrap().remove(&id));
        let fenced = |client: &str| {
            state.fenced.load(Ordering::SeqCst) && client.ends_with(state.fenced_clients.lock().unwrap().as_str())
        };
        if let Some((version, _)) = asked.filter(|(_, client)| fenced(client)) {
            let body = without_brokers(&answer[4..], version).expect("a Metadata answer the proxy can read");
            answer = [&(body.len() as i32).to_be_bytes()[..], &body].concat();
            state.fenced_answers.fetch_add(1, Ordering::SeqCst);
        }
        if to.write_all(&answer).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
}

/// A `Metadata` answer of `version` (after its size) with an empty list of
/// brokers: its header (the correlation ID, then tagged fields when
/// flexible), the throttle time, then the brokers, each a node ID, a host,
/// a port, a rack and tagged fields. The rest is kept.
fn without_brokers(answer: &[u8], version: i16) -> Option<Vec<u8>> {
    let flexible = version >= METADATA_FLEXIBLE;
    let mut at = 4;
    if flexible {
        at = skip_tagged_fields(answer, at)?;
    }
    if version >= 3 {
        at += 4;
    }
    let start = at;
    let brokers = if flexible {
        let (n, next) = unsigned_varint(answer, at)?;
        at = next;
        n.checked_sub(1)?
    } else {
        at += 4;
        u64::try_from(i32::from_be_bytes(answer.get(start..at)?.try_into().ok()?)).ok()?
    };
    for _ in 0..brokers {
        at = skip_string(answer, at + 4, flexible)? + 4;
        if version >= 1 {
            at = skip_string(answer, at, flexible)?;
        }
        if flexible {
            at = skip_tagged_fields(answer, at)?;
        }
    }
    let empty: &[u8] = if flexible { &[1] } else { &[0, 0, 0, 0] };
    Some([&answer[..start], empty, answer.get(at..)?].concat())
}

/// A (nullable) string's end: a compact one's length is an unsigned varint
/// plus one (0 for null), a classic one's an `i16` (-1 for null).
fn skip_string(bytes: &[u8], at: usize, flexible: bool) -> Option<usize> {
    if flexible {
        let (n, next) = unsigned_varint(bytes, at)?;
        return Some(next + n.saturating_sub(1) as usize);
    }
    let n = i16::from_be_bytes(bytes.get(at..at + 2)?.try_into().ok()?);
    Some(at + 2 + n.max(0) as usize)
}

fn skip_tagged_fields(bytes: &[u8], at: usize) -> Option<usize> {
    let (fields, mut at) = unsigned_varint(bytes, at)?;
    for _ in 0..fields {
        let (_tag, next) = unsigned_varint(bytes, at)?;
        let (size, next) = unsigned_varint(bytes, next)?;
        at = next + size as usize;
    }
    Some(at)
}

fn unsigned_varint(bytes: &[u8], mut at: usize) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(at)?;
        at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some((value, at));
        }
    }
    None
}
