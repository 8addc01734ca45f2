//! A TCP proxy in front of the broker, which the broker advertises as its
//! address, so that every client reaches it only through here: it passes
//! every byte both ways, unless told to lose a transaction's commit
//! answer. Then the next `EndTxn` request reaches the broker, which ends
//! the transaction, but its answer never reaches the client; and no new
//! connection reaches the broker until the test lets them again. The
//! producer that sent it cannot learn, within its own timeout, that its
//! transaction committed: what a broker stalled or a network cut at that
//! moment does in production.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// The Kafka protocol's key of `EndTxn`, the request that commits or aborts a transaction.
const END_TXN: i16 = 26;

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
    state.streams.lock().unwrap().extend([kept_client, kept_broker]);
    for s in [&client, &broker] {
        let _ = s.set_nodelay(true);
    }
    let silenced = Arc::new(AtomicBool::new(false));
    let (requests, answers) = (Arc::clone(state), Arc::clone(&silenced));
    std::thread::spawn(move || pass_requests(&requests, &silenced, from_client, to_broker));
    std::thread::spawn(move || pass_answers(&answers, broker, client));
}

/// Passes each request whole, and reads its key: once armed, an `EndTxn`
/// silences its connection's answers from then on.
fn pass_requests(state: &State, silenced: &AtomicBool, mut from: TcpStream, mut to: TcpStream) {
    loop {
        let mut size = [0u8; 4];
        if from.read_exact(&mut size).is_err() {
            break;
        }
        // The size, then the request, sent in one write.
        let mut request = size.to_vec();
        request.resize(4 + i32::from_be_bytes(size).max(0) as usize, 0);
        if from.read_exact(&mut request[4..]).is_err() {
            break;
        }
        let key = request.get(4..6).map(|k| i16::from_be_bytes([k[0], k[1]]));
        if key == Some(END_TXN) && state.armed.swap(false, Ordering::SeqCst) {
            silenced.store(true, Ordering::SeqCst);
            state.refusing.store(true, Ordering::SeqCst);
            state.lost.store(true, Ordering::SeqCst);
        }
        if to.write_all(&request).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
}

/// Passes the broker's answers, but none once the connection is silenced.
fn pass_answers(silenced: &AtomicBool, mut from: TcpStream, mut to: TcpStream) {
    let mut buffer = [0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if silenced.load(Ordering::SeqCst) {
            continue;
        }
        if to.write_all(&buffer[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
}
