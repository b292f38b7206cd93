//! A TCP relay placed between tandem and a backend to inject network faults.
//!
//! Tests point tandem at `relay.url()` instead of the backend's URL, then
//! flip faults on and off while traffic flows. The relay runs on its own OS
//! thread with its own single-threaded tokio runtime, so it behaves the same
//! from sync tests and async tests, keeps working while the test's runtime is
//! blocked, and is shut down deterministically by [`Relay::stop`] / `Drop`.
//!
//! Per connection, each direction is a pipeline: a reader task stamps every
//! chunk it reads with "forward at" = read time + current delay and queues it;
//! a writer pops chunks in order, waits until their time, applies the faults
//! that act on output (blackhole, corruption, cut, bandwidth) and writes. So
//! delays preserve ordering and do not stop the relay from reading.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// Fault state shared between the test thread and the relay thread.
struct Shared {
    upstream: Mutex<String>,
    /// Delay applied to every chunk, in microseconds.
    delay_us: AtomicU64,
    /// Bytes per second per direction per connection; 0 = unlimited.
    bandwidth: AtomicU64,
    blackhole: AtomicBool,
    /// Bytes read and thrown away while blackholed (both directions).
    swallowed: AtomicU64,
    refuse: AtomicBool,
    /// Remaining upstream->client bytes before the one-shot cut fires.
    cut_budget: Mutex<Option<usize>>,
    corrupt_next: AtomicBool,
    /// Bumped by `reset_all`; every connection watches it.
    reset_epoch: watch::Sender<u64>,
    /// Open connections: id -> reset epoch at the time it was accepted.
    live: Mutex<HashMap<u64, u64>>,
    next_id: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not turn every later relay call into a panic.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn delay(&self) -> Duration {
        Duration::from_micros(self.delay_us.load(Ordering::SeqCst))
    }
}

/// A fault-injecting TCP relay listening on `127.0.0.1:<free port>`.
///
/// Faults can be changed at any time from any thread; they apply to chunks
/// read (delay) or written (everything else) after the change.
pub struct Relay {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<watch::Sender<bool>>,
    thread: Option<JoinHandle<()>>,
}

/// Accepts `"host:port"`, `"redis://[user:pw@]host:port[/db]"` or anything
/// displaying as such (e.g. a `SocketAddr`) and returns `"host:port"`.
fn normalize_upstream(s: &str) -> String {
    let s = s.strip_prefix("redis://").or_else(|| s.strip_prefix("tcp://")).unwrap_or(s);
    let s = s.split('/').next().unwrap_or(s);
    let s = s.rsplit('@').next().unwrap_or(s);
    s.to_string()
}

impl Relay {
    /// Starts a relay forwarding to `upstream` (`"127.0.0.1:6379"`,
    /// `server.addr()`, `server.url()` or a `SocketAddr`).
    ///
    /// The listening socket is bound before this returns, so the relay
    /// accepts connections immediately. The upstream is connected per
    /// accepted connection (5 s timeout; on failure the client is closed).
    pub fn start(upstream: impl ToString) -> Relay {
        let upstream = normalize_upstream(&upstream.to_string());
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap_or_else(|e| panic!("Relay: cannot bind 127.0.0.1:0: {e}"));
        listener.set_nonblocking(true).expect("Relay: set_nonblocking");
        let addr = listener.local_addr().expect("Relay: local_addr");
        let (reset_epoch, _) = watch::channel(0u64);
        let shared = Arc::new(Shared {
            upstream: Mutex::new(upstream.clone()),
            delay_us: AtomicU64::new(0),
            bandwidth: AtomicU64::new(0),
            blackhole: AtomicBool::new(false),
            swallowed: AtomicU64::new(0),
            refuse: AtomicBool::new(false),
            cut_budget: Mutex::new(None),
            corrupt_next: AtomicBool::new(false),
            reset_epoch,
            live: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
        });
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("relay-{}->{upstream}", addr.port()))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("Relay: cannot build tokio runtime");
                rt.block_on(accept_loop(listener, thread_shared, shutdown_rx));
                // Dropping the runtime drops every connection task, and with
                // them their sockets.
                rt.shutdown_timeout(Duration::from_secs(1));
            })
            .expect("Relay: cannot spawn thread");
        Relay { addr, shared, shutdown: Some(shutdown_tx), thread: Some(thread) }
    }

    /// `"127.0.0.1:PORT"` of the relay's listener.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// The relay's listening port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `"redis://127.0.0.1:PORT"` of the relay's listener.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// The `host:port` new connections are forwarded to.
    pub fn upstream(&self) -> String {
        lock(&self.shared.upstream).clone()
    }

    /// Forwards *new* connections to a different upstream (existing ones
    /// keep theirs). Useful for failover scenarios.
    pub fn set_upstream(&self, upstream: impl ToString) {
        *lock(&self.shared.upstream) = normalize_upstream(&upstream.to_string());
    }

    /// Delays every chunk, in both directions, by `delay` (so a round trip
    /// takes at least `2 * delay`). Applies to data read after the call;
    /// ordering is always preserved. `Duration::ZERO` removes the delay.
    pub fn set_delay(&self, delay: Duration) {
        self.shared.delay_us.store(delay.as_micros() as u64, Ordering::SeqCst);
    }

    /// Limits throughput to `bytes_per_sec` per direction per connection
    /// (paced in ~10 ms slices); `None` = unlimited.
    pub fn set_bandwidth(&self, bytes_per_sec: Option<u64>) {
        let bw = bytes_per_sec.map(|b| b.max(1)).unwrap_or(0);
        self.shared.bandwidth.store(bw, Ordering::SeqCst);
    }

    /// Simulates a network partition: connections are still accepted and
    /// read, but nothing is forwarded either way and bytes read meanwhile
    /// are discarded (so existing connections are desynchronised afterwards;
    /// use new ones). Connections stay open. EOFs are still propagated so
    /// closed sockets do not pile up.
    pub fn blackhole(&self, on: bool) {
        self.shared.blackhole.store(on, Ordering::SeqCst);
    }

    /// Bytes the blackhole has swallowed so far.
    pub fn swallowed(&self) -> u64 {
        self.shared.swallowed.load(Ordering::SeqCst)
    }

    /// Aborts every currently open connection with a TCP RST on both sides
    /// (SO_LINGER 0, then close) and returns once they are all gone
    /// (bounded: panics after 5 s). New connections are unaffected.
    #[track_caller]
    pub fn reset_all(&self) {
        let mut epoch = 0;
        self.shared.reset_epoch.send_modify(|e| {
            *e += 1;
            epoch = *e;
        });
        let shared = &self.shared;
        super::wait_until(Duration::from_secs(5), "relay connections to be reset", || {
            lock(&shared.live).values().all(|&e| e >= epoch)
        });
    }

    /// While on, new connections are accepted and immediately closed
    /// (the client sees EOF / a reset). Existing connections are unaffected.
    pub fn refuse(&self, on: bool) {
        self.shared.refuse.store(on, Ordering::SeqCst);
    }

    /// Arms (or with `None` disarms) a one-shot cut: after `n` more bytes have
    /// been forwarded from upstream to a client (on whichever connection
    /// they flow), that connection is closed on both sides — typically in the
    /// middle of a reply. The fault then disarms itself.
    pub fn cut_after_reply_bytes(&self, n: Option<usize>) {
        *lock(&self.shared.cut_budget) = n;
    }

    /// While armed, the next chunk forwarded from upstream to a client has
    /// its first byte replaced by `b'?'` (an invalid RESP type byte), then
    /// the fault disarms itself.
    pub fn corrupt_next_reply(&self, on: bool) {
        self.shared.corrupt_next.store(on, Ordering::SeqCst);
    }

    /// Number of currently open relayed connections.
    pub fn connections(&self) -> usize {
        lock(&self.shared.live).len()
    }

    /// Total number of connections accepted and relayed so far (refused ones
    /// excluded); handy to observe reconnects.
    pub fn accepted(&self) -> u64 {
        self.shared.next_id.load(Ordering::SeqCst)
    }

    /// Stops listening and closes every connection, then joins the relay
    /// thread (bounded). Idempotent.
    pub fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(true);
        }
        if let Some(thread) = self.thread.take() {
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while !thread.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
            if thread.is_finished() {
                let _ = thread.join();
            } else {
                eprintln!("Relay {}: thread did not stop within 5 s; detaching it", self.addr);
            }
        }
        lock(&self.shared.live).clear();
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop();
    }
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("addr", &self.addr)
            .field("upstream", &self.upstream())
            .field("connections", &self.connections())
            .finish()
    }
}

async fn accept_loop(listener: std::net::TcpListener, shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let listener = TcpListener::from_std(listener).expect("Relay: TcpListener::from_std");
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok((sock, _)) => {
                    if shared.refuse.load(Ordering::SeqCst) {
                        drop(sock);
                        continue;
                    }
                    tokio::spawn(handle_conn(sock, shared.clone()));
                }
                // E.g. EMFILE: back off briefly instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
        }
    }
}

/// Removes a connection from the live table however its task ends
/// (normally, by error, or by being dropped at relay shutdown).
struct LiveGuard {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        lock(&self.shared.live).remove(&self.id);
    }
}

/// Closes `sock` with an RST instead of a FIN.
fn abort(sock: TcpStream) {
    // `set_linger` is deprecated in recent tokio in favour of
    // `set_zero_linger`, which older versions lack; this works on both.
    #[allow(deprecated)]
    let _ = sock.set_linger(Some(Duration::ZERO));
    drop(sock);
}

enum Msg {
    /// Data to forward, and the instant it may be forwarded.
    Data(Instant, Vec<u8>),
    /// The source half-closed: forward a FIN.
    Eof,
}

/// Why a direction stopped early (makes `try_join!` tear down the rest).
enum Stop {
    /// A read or write failed (peer reset, broken pipe...).
    Io,
    /// The one-shot cut fired after forwarding its budget.
    Cut,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    ToUpstream,
    ToClient,
}

enum Outcome {
    Done,
    Reset,
    Cut,
    Broken,
}

async fn handle_conn(client: TcpStream, shared: Arc<Shared>) {
    let mut reset = shared.reset_epoch.subscribe();
    // Register under the epoch we have *seen*: if reset_all bumps it after
    // this line, `reset.changed()` fires, so no connection escapes a reset.
    let epoch = *reset.borrow_and_update();
    let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
    lock(&shared.live).insert(id, epoch);
    let _guard = LiveGuard { shared: shared.clone(), id };

    let mut client = client;
    let _ = client.set_nodelay(true);
    let target = lock(&shared.upstream).clone();
    let connect = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(target));
    let mut upstream = tokio::select! {
        r = connect => match r {
            Ok(Ok(s)) => s,
            // Upstream unreachable: close the client like a dead backend would.
            _ => return,
        },
        _ = reset.changed() => {
            abort(client);
            return;
        }
    };
    let _ = upstream.set_nodelay(true);

    let outcome = {
        let (client_r, client_w) = client.split();
        let (up_r, up_w) = upstream.split();
        let (to_up_tx, to_up_rx) = mpsc::unbounded_channel();
        let (to_client_tx, to_client_rx) = mpsc::unbounded_channel();
        let s = &*shared;
        let pump = async {
            tokio::try_join!(
                read_side(client_r, to_up_tx, s),
                write_side(to_up_rx, up_w, s, Dir::ToUpstream),
                read_side(up_r, to_client_tx, s),
                write_side(to_client_rx, client_w, s, Dir::ToClient),
            )
        };
        tokio::select! {
            r = pump => match r {
                Ok(_) => Outcome::Done,
                Err(Stop::Cut) => Outcome::Cut,
                Err(Stop::Io) => Outcome::Broken,
            },
            _ = reset.changed() => Outcome::Reset,
        }
    };
    match outcome {
        Outcome::Done => {}
        Outcome::Reset | Outcome::Broken => {
            // Broken: one side failed hard; make the other side see a hard
            // failure too rather than a polite EOF.
            abort(client);
            abort(upstream);
        }
        Outcome::Cut => {
            // FIN after the truncated data, so the client reads the partial
            // reply and then EOF.
            let _ = client.shutdown().await;
        }
    }
}

async fn read_side(mut r: ReadHalf<'_>, tx: mpsc::UnboundedSender<Msg>, shared: &Shared) -> Result<(), Stop> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = r.read(&mut buf).await.map_err(|_| Stop::Io)?;
        if n == 0 {
            let _ = tx.send(Msg::Eof);
            return Ok(());
        }
        if shared.blackhole.load(Ordering::SeqCst) {
            shared.swallowed.fetch_add(n as u64, Ordering::SeqCst);
            continue;
        }
        let due = Instant::now() + shared.delay();
        if tx.send(Msg::Data(due, buf[..n].to_vec())).is_err() {
            return Ok(());
        }
    }
}

async fn write_side(
    mut rx: mpsc::UnboundedReceiver<Msg>,
    mut w: WriteHalf<'_>,
    shared: &Shared,
    dir: Dir,
) -> Result<(), Stop> {
    let mut next_slot = Instant::now();
    while let Some(msg) = rx.recv().await {
        let mut data = match msg {
            Msg::Eof => {
                let _ = w.shutdown().await;
                return Ok(());
            }
            Msg::Data(due, data) => {
                tokio::time::sleep_until(due).await;
                data
            }
        };
        // Re-checked here so data queued (delayed) before a blackhole started
        // is not delivered during it either.
        if shared.blackhole.load(Ordering::SeqCst) {
            continue;
        }
        let mut cut = false;
        if dir == Dir::ToClient {
            if shared.corrupt_next.swap(false, Ordering::SeqCst) {
                data[0] = b'?';
            }
            let mut budget = lock(&shared.cut_budget);
            if let Some(left) = *budget {
                if data.len() >= left {
                    data.truncate(left);
                    *budget = None;
                    cut = true;
                } else {
                    *budget = Some(left - data.len());
                }
            }
        }
        write_paced(&mut w, &data, shared, &mut next_slot).await.map_err(|_| Stop::Io)?;
        if cut {
            return Err(Stop::Cut);
        }
    }
    Ok(())
}

/// Writes `data`, pacing it to the configured bandwidth (re-read per slice so
/// changes apply mid-transfer). Idle time does not accumulate burst credit.
async fn write_paced(
    w: &mut WriteHalf<'_>,
    data: &[u8],
    shared: &Shared,
    next_slot: &mut Instant,
) -> std::io::Result<()> {
    let mut rest = data;
    while !rest.is_empty() {
        let bw = shared.bandwidth.load(Ordering::SeqCst);
        if bw == 0 {
            return w.write_all(rest).await;
        }
        let slice = ((bw / 100).max(1) as usize).min(rest.len());
        let now = Instant::now();
        if *next_slot > now {
            tokio::time::sleep_until(*next_slot).await;
        } else {
            *next_slot = now;
        }
        w.write_all(&rest[..slice]).await?;
        *next_slot += Duration::from_secs_f64(slice as f64 / bw as f64);
        rest = &rest[slice..];
    }
    Ok(())
}
