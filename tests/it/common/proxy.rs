//! A TCP proxy a test controls, between the engine and Redis or Postgres: the network faults a
//! test cannot make by killing a server.
//!
//! ```text
//! engine ──> 127.0.0.1:<proxy port> ──> upstream (Redis, Postgres)
//!              pass       bytes go through
//!              blackhole  bytes are held, in both directions, until it lifts (no RST, no
//!                         FIN: a cable cut or a dropped route; TCP would retransmit them
//!                         afterwards, so the held bytes are delivered then)
//!              delay      each chunk waits this long before it is forwarded
//!              reset()    every open connection is closed with an RST, both sides
//! ```
//!
//! New connections are accepted in every mode (a blackholed SYN would be retried by the
//! kernel; here it is accepted and then holds, which the engine sees the same way: no answer).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy does with bytes now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass,
    Blackhole,
    Delay(Duration),
}

struct State {
    mode: std::sync::Mutex<Mode>,
    /// Bumped by [`Proxy::reset`]: connections opened before it close with an RST.
    resets: AtomicU64,
    /// Connections accepted, in all.
    accepted: AtomicU64,
}

pub struct Proxy {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// A proxy on a free local port forwarding to `upstream`, passing bytes through.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            mode: std::sync::Mutex::new(Mode::Pass),
            resets: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
        });
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                shared.accepted.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(connection(client, upstream, shared.clone()));
            }
        });
        Proxy { addr, state, task }
    }

    pub fn set(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = mode;
    }

    /// Close every open connection with an RST (to the engine and to the upstream).
    pub fn reset(&self) {
        self.state.resets.fetch_add(1, Ordering::SeqCst);
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.state.accepted.load(Ordering::Relaxed)
    }

    /// `redis://` URL through the proxy.
    pub fn redis_url(&self) -> String {
        format!("redis://{}", self.addr)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.reset();
    }
}

async fn connection(client: TcpStream, upstream: SocketAddr, state: Arc<State>) {
    let generation = state.resets.load(Ordering::SeqCst);
    let Ok(server) = TcpStream::connect(upstream).await else {
        let _ = client.set_zero_linger();
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    // each direction ends on its own: an EOF is passed on when its writing half is dropped (a
    // FIN), and a reset ends both, each pump closing its halves with a zero linger (an RST)
    tokio::join!(
        pump(cr, sw, state.clone(), generation),
        pump(sr, cw, state, generation)
    );
}

/// Copy `from` to `to` as the mode says, until EOF, an error or a reset after `generation`. A
/// delay is latency, not a slower pipe: each chunk leaves `d` after it arrived, however many
/// are on their way (as `tc netem delay` does per packet).
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    state: Arc<State>,
    generation: u64,
) {
    let reset = {
        let state = state.clone();
        move || state.resets.load(Ordering::SeqCst) != generation
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let reading = {
        let reset = reset.clone();
        async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                tokio::select! {
                    r = from.read(&mut buf) => match r {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if tx.send((tokio::time::Instant::now(), buf[..n].to_vec())).is_err() {
                                break;
                            }
                        }
                    },
                    _ = wait_for_reset(&reset) => break,
                }
            }
            from
        }
    };
    let writing = {
        let reset = reset.clone();
        async move {
            'chunks: while let Some((arrived, chunk)) = rx.recv().await {
                loop {
                    if reset() {
                        break 'chunks;
                    }
                    let mode = *state.mode.lock().unwrap();
                    match mode {
                        Mode::Pass => break,
                        Mode::Delay(d) => {
                            tokio::time::sleep_until(arrived + d).await;
                            break;
                        }
                        Mode::Blackhole => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                }
                if reset() || to.write_all(&chunk).await.is_err() {
                    break;
                }
            }
            to
        }
    };
    // the reader ends first on EOF; the writer then drains what it holds and ends
    let (from, to) = tokio::join!(reading, writing);
    if reset() {
        // an RST rather than a FIN, on both sockets
        let _ = from.as_ref().set_zero_linger();
        let _ = to.as_ref().set_zero_linger();
    }
}

async fn wait_for_reset(reset: &impl Fn() -> bool) {
    while !reset() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
