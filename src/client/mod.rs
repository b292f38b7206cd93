//! One accepted client connection: read requests, keep the connection's state, send each
//! request down the right path, and have the writer return replies in order.
//!
//! Paths a request can take:
//! - **shared**: the client's pooled, pipelined backend connection (the common, fast case);
//! - **dedicated**: a backend connection of the client's own, while it holds state the pool
//!   cannot share (MULTI/WATCH, another database, client tracking) or for a blocking command;
//! - **local**: answered by the proxy (AUTH, HELLO, CLIENT SETNAME/GETNAME, QUIT, RESET,
//!   refusals);
//! - **pipe**: after SUBSCRIBE the connection becomes a pass-through to a backend connection,
//!   since Pub/Sub pushes do not pair with requests.
//!
//! When a client moves between the shared and a dedicated connection, the reader first
//! waits until every earlier reply is in ([`writer::Out::Barrier`]): the connections are
//! independent, and without the wait a command could overtake one sent before it.
//!
//! With two backends, each command is served by the side its first key's slot maps to
//! ([`crate::route::Routing`]); a write's effect is then mirrored to the other side from the
//! serving connection's reader, in the order the serving backend applied it. Transactions
//! are queued here and sent as one `MULTI ... EXEC` block to one side, so the mirror can
//! replay exactly the block that succeeded.

pub mod auth;
pub mod merge;
pub mod tls;
mod writer;

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};

use crate::backend::{Backend, BackendError, DedicatedConn, Handshake, Job, JobBatch, Reply, SharedConn, Sink};
use crate::proto::commands::{CommandInfo, Flags, OTHER_ID};
use crate::proto::reply::{self, HelloValue, Protocol};
use crate::proto::request::{self, Request};
use crate::route::{MirrorMode, Routing, Side};
use crate::server::Proxy;
use merge::MergeKind;
use writer::{Out, Outbox, Tag};

/// Which backend connection the previous request went to.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Path {
    Shared,
    Dedicated(Side),
}

/// What else happens with a request besides being served.
enum Also {
    Nothing,
    /// A write whose effect is mirrored; `sync`: the reply waits for the mirror.
    /// `blocking`: a blocking pop or move, served when some other connection's write
    /// fed its key (see [`fenced_mirror`]).
    Mirror {
        sync: bool,
        blocking: bool,
    },
    /// A sampled read compared with the other side.
    Compare(crate::compare::Sample),
}

/// What the reader should do after a request.
enum Flow {
    Continue,
    Close,
}

/// Per-connection state, replayed on any backend connection the client later uses.
struct Session {
    id: u64,
    /// When the bytes being parsed were read: the start of every latency measured for the
    /// commands in them (one clock read per read, not per command).
    read_at: std::time::Instant,
    proto: Protocol,
    db: u32,
    name: Option<Bytes>,
    authenticated: bool,
    /// Failed AUTH attempts on this connection (each one after the first is answered later).
    auth_failures: u32,
    read_only: bool,
    in_multi: bool,
    /// Commands queued since MULTI, sent as one block at EXEC.
    queued: Vec<Request>,
    /// A command inside MULTI was refused: EXEC must abort, as Redis would.
    multi_poisoned: bool,
    /// The side whose dedicated connection holds the client's WATCH, if any.
    watching: Option<Side>,
    tracking: bool,
    /// The `CLIENT TRACKING ON ...` command, replayed on every dedicated connection.
    tracking_cmd: Option<Bytes>,
    last_path: Path,
    dedicated: [Option<DedicatedConn>; 2],
    /// Resolves once the mirror effect of this client's latest delayed write on a dedicated
    /// connection (a fenced blocking pop, or a write queued behind one) is queued; later
    /// mirrored writes there wait for it, so the client's effects keep their order.
    mirror_tail: Option<oneshot::Receiver<()>>,
    /// Pub/Sub pass-through: requests are written here as they are.
    pipe: Option<crate::backend::tls::WriteHalf>,
    out: Outbox,
    pushes: mpsc::UnboundedSender<Bytes>,
    /// Commands for the pooled connection gathered during the current read.
    gather: Option<Gather>,
    owner: Arc<Proxy>,
}

/// A client's commands for one pooled connection, gathered while one read is parsed and
/// queued as a single job when it is done (or before anything that must not overtake them):
/// one channel message and one wake-up of the connection for a whole pipeline.
struct Gather {
    side: Side,
    proto: Protocol,
    conn: SharedConn,
    jobs: JobBatch,
    /// Routing registrations of the gathered commands, by generation parity: a cutover
    /// change waits until they are queued.
    held: [usize; 2],
    proxy: Arc<Proxy>,
}

/// Most commands gathered into one job.
const GATHER_MAX: usize = 64;

impl Gather {
    /// Adds a command; true when the gather is full and should be sent.
    fn add(&mut self, job: Job) -> bool {
        self.jobs.push(job);
        self.jobs.len() >= GATHER_MAX || self.jobs.bytes() >= crate::backend::BATCH_BYTES
    }
}

impl Drop for Gather {
    fn drop(&mut self) {
        // Whether queued or abandoned, these commands no longer hold a cutover back.
        self.proxy.release_routing(self.held);
    }
}

/// Serves one client (plain TCP) until it disconnects, misbehaves, or the proxy shuts down.
pub async fn serve(stream: TcpStream, proxy: Arc<Proxy>, id: u64, shutdown: watch::Receiver<bool>) {
    let _ = stream.set_nodelay(true);
    let (rd, wr) = stream.into_split();
    serve_halves(rd, wr, proxy, id, shutdown).await
}

/// Serves one client over TLS: the handshake (bounded by `handshake_timeout`), then the same
/// session as plain TCP.
pub async fn serve_tls(
    stream: TcpStream,
    acceptor: tls::ServerTls,
    proxy: Arc<Proxy>,
    id: u64,
    shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let peer = stream.peer_addr().ok();
    match tokio::time::timeout(tls::HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => {
            let (rd, wr) = tokio::io::split(tls);
            serve_halves(rd, wr, proxy, id, shutdown).await
        }
        Ok(Err(e)) => {
            proxy.metrics.protocol_errors.inc();
            tracing::info!(client = id, ?peer, error = %e, "client TLS handshake failed");
        }
        Err(_) => tracing::info!(client = id, ?peer, "client TLS handshake timed out"),
    }
}

async fn serve_halves<R, W>(mut rd: R, wr: W, proxy: Arc<Proxy>, id: u64, mut shutdown: watch::Receiver<bool>)
where
    R: tokio::io::AsyncRead + Unpin + Send,
    W: tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let policy = proxy.policy.load_full();
    let (out_tx, out_rx) = writer::channel();
    let (push_tx, push_rx) = mpsc::unbounded_channel();
    let writer = tokio::spawn(writer::run(wr, out_rx, push_rx, proxy.metrics.clone()));

    let mut session = Session {
        id,
        read_at: std::time::Instant::now(),
        proto: Protocol::Resp2,
        db: 0,
        name: None,
        authenticated: !policy.users.enabled(),
        auth_failures: 0,
        read_only: false,
        in_multi: false,
        queued: Vec::new(),
        multi_poisoned: false,
        watching: None,
        tracking: false,
        tracking_cmd: None,
        last_path: Path::Shared,
        dedicated: [None, None],
        mirror_tail: None,
        pipe: None,
        out: out_tx,
        pushes: push_tx,
        gather: None,
        owner: proxy.clone(),
    };

    let mut buf = BytesMut::with_capacity(READ_MIN);
    // Room offered to the next read: doubled while reads fill it, so a client sending large
    // pipelines is read in a few syscalls, while an idle one keeps a small buffer.
    let mut read_room = READ_MIN;
    let mut draining = false;
    'conn: loop {
        let limits = proxy.policy.load().limits;
        let mut parsed = 0u64;
        loop {
            match request::parse(&mut buf, &limits) {
                Ok(Some(req)) => {
                    parsed += 1;
                    match session.handle(&proxy, req).await {
                        Ok(Flow::Continue) => {}
                        Ok(Flow::Close) | Err(Gone) => break 'conn,
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    proxy.metrics.protocol_errors.inc();
                    tracing::info!(client = id, error = %e, "closing client after protocol error");
                    let _ = session.out.push(Out::Ready(reply::error(&e.client_message())));
                    break 'conn;
                }
            }
        }
        proxy.metrics.commands.inc_by(parsed);
        if buf.capacity() > 1 << 20 && buf.is_empty() {
            buf = BytesMut::with_capacity(READ_MIN);
        }
        buf.reserve(read_room);
        let offered = buf.capacity() - buf.len();
        // The commands this read carried go to their backend connection as one job, and
        // their replies to the writer as one batch; the next read waits until the client is
        // owed fewer than `max_pipeline` replies.
        session.send_gathered().await;
        if session.out.flush().is_err() {
            break;
        }
        session.out.room(proxy.policy.load().max_pipeline).await;

        // While shutting down, serve what the client already sent and stop once it goes quiet.
        let limit = if draining {
            Some(DRAIN_QUIET)
        } else {
            proxy.policy.load().idle_timeout.filter(|_| session.is_idle_checked())
        };
        let read = async {
            match limit {
                Some(limit) => tokio::time::timeout(limit, rd.read_buf(&mut buf)).await.ok(),
                None => Some(rd.read_buf(&mut buf).await),
            }
        };
        let read = if draining {
            read.await
        } else {
            tokio::select! {
                r = read => r,
                _ = shutdown.changed() => {
                    draining = true;
                    continue;
                }
            }
        };
        match read {
            None => {
                tracing::debug!(client = id, "closing idle client");
                break;
            }
            Some(Ok(0)) | Some(Err(_)) => break,
            Some(Ok(n)) => {
                session.read_at = std::time::Instant::now();
                read_room = if n >= offered { (read_room * 2).min(READ_MAX) } else { read_room.max(n) };
            }
        }
    }
    // Commands read before a QUIT (or a failure) still run, as they would on Redis.
    session.send_gathered().await;
    let _ = session.out.push(Out::Close);
    let _ = session.out.flush();
    if let Some(mut pipe) = session.pipe.take() {
        let _ = pipe.shutdown().await;
    }
    drop(session);
    let _ = writer.await;
}

/// Smallest and largest room offered to one read of a client's socket.
const READ_MIN: usize = 4096;
const READ_MAX: usize = 256 * 1024;

/// During shutdown, a client that sends nothing for this long is considered done.
const DRAIN_QUIET: std::time::Duration = std::time::Duration::from_millis(100);

/// The client's writer is gone (its socket failed): stop serving it.
struct Gone;

impl Session {
    /// Idle clients are closed only when nothing of theirs can legitimately be waiting.
    fn is_idle_checked(&self) -> bool {
        self.pipe.is_none() && self.last_path == Path::Shared && !self.in_multi && self.watching.is_none()
    }

    /// True while the client holds state that only a dedicated connection has.
    fn pinned(&self) -> bool {
        self.tracking || self.db != 0
    }

    async fn reply(&mut self, bytes: Bytes) -> Result<Flow, Gone> {
        self.queue(Out::Ready(bytes)).await
    }

    async fn error(&mut self, text: &str) -> Result<Flow, Gone> {
        self.reply(reply::error(text)).await
    }

    async fn queue(&mut self, out: Out) -> Result<Flow, Gone> {
        self.out.push(out).map_err(|_| Gone)?;
        Ok(Flow::Continue)
    }

    /// Queues the gathered commands on their connection.
    async fn send_gathered(&mut self) {
        if let Some(mut gather) = self.gather.take() {
            if let Some(job) = gather.jobs.take() {
                gather.conn.send(job).await;
            }
            // Queued: a cutover change may go ahead now.
            drop(gather);
        }
    }

    /// Sends a job over the client's pooled connection to `side`: gathered with the others
    /// of this read when the connection takes batches, at once otherwise.
    async fn send_shared(&mut self, proxy: &Proxy, side: Side, job: Job) {
        if self.gather.as_ref().is_some_and(|g| g.side != side || g.proto != self.proto) {
            self.send_gathered().await;
        }
        if self.gather.is_none() {
            let conn = self.backend(proxy, side).shared(self.proto, self.id).clone();
            if !conn.takes_batches() {
                conn.send(job).await;
                return;
            }
            self.gather = Some(Gather {
                side,
                proto: self.proto,
                conn,
                jobs: JobBatch::default(),
                held: [0, 0],
                proxy: self.owner.clone(),
            });
        }
        let full = self.gather.as_mut().is_some_and(|g| g.add(job));
        if full {
            self.send_gathered().await;
        }
    }

    /// Keeps a command's routing registration until its gathered job is queued (released
    /// at once if nothing is gathered).
    fn hold_routing(&mut self, guard: crate::server::RoutingGuard<'_>) {
        if let Some(g) = &mut self.gather {
            g.held[guard.keep()] += 1;
        }
    }

    /// Waits until every reply queued so far has been received from its backend.
    async fn barrier(&mut self) -> Result<(), Gone> {
        self.send_gathered().await;
        let (tx, rx) = oneshot::channel();
        self.out.push(Out::Barrier(tx)).map_err(|_| Gone)?;
        self.out.flush().map_err(|_| Gone)?;
        rx.await.map_err(|_| Gone)
    }

    async fn switch_path(&mut self, path: Path) -> Result<(), Gone> {
        if self.last_path != path {
            self.barrier().await?;
            self.last_path = path;
        }
        Ok(())
    }

    fn handshake(&self) -> Handshake {
        Handshake {
            proto: self.proto,
            db: (self.db != 0).then_some(self.db),
            name: self.name.clone(),
            tracking: self.tracking_cmd.clone(),
        }
    }

    fn backend(&self, proxy: &Proxy, side: Side) -> Arc<Backend> {
        proxy.backend(side)
    }

    async fn handle(&mut self, proxy: &Proxy, req: Request) -> Result<Flow, Gone> {
        if self.pipe.is_some() {
            return self.handle_piped(proxy, req).await;
        }
        let table = proxy.commands.load();
        let argv = req.argv();
        let info = table.lookup(&argv);
        let name: &str = info.map(|i| i.name.as_ref()).unwrap_or("");
        let flags = info.map(|i| i.flags).unwrap_or(Flags::empty());

        if !self.authenticated && !matches!(name, "auth" | "hello" | "quit" | "reset") {
            return self.error("NOAUTH Authentication required.").await;
        }

        // Commands that only make sense answered by the proxy.
        match name {
            "auth" => return self.auth(proxy, &req).await,
            "hello" => return self.hello(proxy, &req).await,
            "quit" => {
                self.reply(reply::ok()).await?;
                return Ok(Flow::Close);
            }
            "reset" => return self.reset(proxy).await,
            "select" => return self.select(proxy, &req).await,
            "client|setname" => return self.client_setname(&req).await,
            "client|getname" => {
                let r = match &self.name {
                    Some(n) => reply::bulk(n),
                    None => reply::null(self.proto),
                };
                return self.reply(r).await;
            }
            "client|reply" => {
                return self
                    .refuse_in_multi("ERR tandem: CLIENT REPLY is not supported: every request gets its reply")
                    .await
            }
            _ => {}
        }

        if flags.contains(Flags::DANGEROUS) && !proxy.policy.load().allows(name) {
            proxy.metrics.refused.inc();
            let shown = name.replace('|', " ").to_ascii_uppercase();
            tracing::info!(client = self.id, command = %shown, "refused dangerous command");
            let text = format!(
                "ERR tandem: command '{shown}' is refused by the proxy (list \"{}\" in allow_commands to permit it)",
                shown.to_ascii_lowercase()
            );
            return self.refuse_in_multi(&text).await;
        }
        if self.read_only && flags.contains(Flags::WRITE) {
            let text = format!(
                "NOPERM this user has no permissions to run the '{}' command",
                String::from_utf8_lossy(req.arg(0)).to_ascii_lowercase()
            );
            return self.refuse_in_multi(&text).await;
        }

        // Transactions are assembled here and sent whole at EXEC.
        match name {
            "multi" => return self.multi().await,
            "exec" => return self.exec(proxy).await,
            "discard" => return self.discard(proxy).await,
            "watch" if self.in_multi => return self.error("ERR WATCH inside MULTI is not allowed").await,
            "watch" => {
                drop(argv);
                return self.watch(proxy, info, req).await;
            }
            "unwatch" if !self.in_multi => return self.unwatch(proxy).await,
            _ => {}
        }
        if self.in_multi {
            return match info {
                None => {
                    self.multi_poisoned = true;
                    let text = format!(
                        "ERR unknown command '{}', with args beginning with: ",
                        String::from_utf8_lossy(req.arg(0))
                    );
                    self.error(&text).await
                }
                Some(i) if !i.arity_ok(req.argc()) => {
                    self.multi_poisoned = true;
                    let text = format!("ERR wrong number of arguments for '{}' command", i.name.replace('|', " "));
                    self.error(&text).await
                }
                // Its reply would reach the client inside EXEC's, past the redaction in `send`.
                Some(i) if &*i.name == "config|get" => {
                    self.multi_poisoned = true;
                    self.error("ERR tandem: CONFIG GET is not allowed inside MULTI").await
                }
                Some(_) => {
                    drop(argv);
                    self.queued.push(req);
                    self.reply(Bytes::from_static(b"+QUEUED\r\n")).await
                }
            };
        }

        let (routing, routing_guard) = proxy.route();
        if flags.contains(Flags::SUBSCRIBE) {
            let side = self.channel_side(&routing, &req);
            drop(argv);
            return self.enter_pipe(proxy, side, req).await;
        }
        if name == "client|tracking" {
            self.tracking = !req.arg_is(2, "off");
            // New dedicated connections replay it; the one on the side that does not serve
            // this (keyless) command gets it now, so keys on both sides send invalidations.
            self.tracking_cmd = self.tracking.then(|| req.raw().clone());
            let hs = self.handshake();
            let other = routing.keyless_side().other();
            if let Some(conn) = &mut self.dedicated[other.index()] {
                *conn.handshake_mut() = hs;
                let _ = conn.send(Job::discard(req.raw().clone())).await;
            }
        } else if matches!(name, "client|caching" | "client|no-evict" | "client|no-touch") {
            self.tracking = true;
        }

        // Which side serves it, and whether it must be split between the two.
        let keys = match info {
            Some(i) if routing.has_target => i.key_indices(&argv),
            _ => Default::default(),
        };
        let side = if !routing.has_target {
            Side::Source
        } else if name == "publish" {
            self.channel_side(&routing, &req)
        } else if keys.is_empty() {
            routing.keyless_side()
        } else {
            let first = routing.side_of(argv[keys[0]]);
            if keys.len() > 1 && routing.plan.uniform().is_none() {
                let mixed = keys.iter().any(|&k| routing.side_of(argv[k]) != first);
                if mixed {
                    if let Some(kind) = MergeKind::for_command(name) {
                        let keys = keys.clone();
                        drop(argv);
                        return self.split(proxy, &routing, info, kind, req, &keys).await;
                    }
                    proxy.metrics.cross_side.inc();
                }
            }
            first
        };
        let blocking = info.is_some_and(|i| i.blocks(&argv));
        // Script and function management is not flagged as a write, but a target that is
        // missing the application's scripts would answer EVALSHA/FCALL with an error after
        // cutover: mirror it like a write.
        let write = flags.contains(Flags::WRITE) || is_script_management(name);
        let path = if self.pinned() || blocking { Path::Dedicated(side) } else { Path::Shared };
        let also = if write && routing.has_target && routing.mirror != MirrorMode::Off {
            let sync = match keys.first() {
                Some(&k) => routing.sync_for(argv[k]),
                None => routing.mirror == MirrorMode::Sync || routing.moving.is_some(),
            };
            Also::Mirror { sync, blocking }
        } else if routing.has_target
            && !write
            && !blocking
            && flags.contains(Flags::READONLY)
            && proxy.compare.sampled()
        {
            let rule = crate::compare::rules::rule_for(name, &argv);
            if rule == crate::compare::rules::Rule::Skip {
                proxy.compare.count(crate::compare::Outcome::Skipped);
                Also::Nothing
            } else if let Some(slot) = proxy.compare.admit() {
                Also::Compare(crate::compare::Sample {
                    slot,
                    rule,
                    command: name.to_string(),
                    key: keys.first().map(|&k| Bytes::copy_from_slice(argv[k])),
                    request: req.clone(),
                    db: self.db,
                    serving: side,
                })
            } else {
                Also::Nothing
            }
        } else {
            Also::Nothing
        };
        drop(argv);
        proxy.metrics.served[side.index()].inc();
        let cmd = info.map(|i| i.id).unwrap_or(OTHER_ID);
        let flow = self.send(proxy, req, side, path, also, cmd).await;
        self.hold_routing(routing_guard);
        flow
    }

    /// The side a Pub/Sub channel lives on: channels follow their slot like keys.
    fn channel_side(&self, routing: &Routing, req: &Request) -> Side {
        if !routing.has_target {
            return Side::Source;
        }
        if req.argc() > 1 {
            routing.side_of(req.arg(1))
        } else {
            routing.keyless_side()
        }
    }

    /// Refuses a command; inside MULTI the refusal also dooms the transaction, as a
    /// queuing error does in Redis.
    async fn refuse_in_multi(&mut self, text: &str) -> Result<Flow, Gone> {
        if self.in_multi {
            self.multi_poisoned = true;
        }
        self.error(text).await
    }

    /// Sends one request to `side` over `path`. `mirror` is `Some(sync)` when the write's
    /// effect must reach the other side; with `sync` the client's reply waits for it.
    async fn send(
        &mut self,
        proxy: &Proxy,
        req: Request,
        side: Side,
        path: Path,
        also: Also,
        cmd: u16,
    ) -> Result<Flow, Gone> {
        self.switch_path(path).await?;
        let tag = Tag::new(cmd, side, self.read_at);
        let payload = req.raw().clone();
        let (client_tx, client_rx) = oneshot::channel();
        let mut mirror_rx = None;
        let sink = match also {
            // The backend's own secrets (requirepass, masterauth) must not reach clients.
            Also::Nothing if cmd == config_get_id() => Sink::Hook(
                Box::new(|reply: Reply| reply.map(|frame| redact_config(&frame).unwrap_or(frame))),
                client_tx,
            ),
            Also::Nothing => Sink::Reply(client_tx),
            Also::Mirror { sync, blocking } => {
                let done = if sync {
                    let (tx, rx) = oneshot::channel();
                    mirror_rx = Some(rx);
                    Some(tx)
                } else {
                    None
                };
                let mirrors = proxy.mirrors();
                let db = self.db;
                let enqueue = move |frame: &Bytes| mirrors.enqueue_effect(side.other(), cmd, &req, frame, db, done);
                self.mirror_sink(proxy, path, blocking.then_some(side), enqueue, client_tx)
            }
            Also::Compare(sample) => {
                let comparer = proxy.compare.clone();
                let mirrors = proxy.mirrors();
                let serving = proxy.backend(side);
                let hook = move |reply: Reply| {
                    match &reply {
                        Ok(frame) => comparer.start(mirrors, serving, sample, frame.clone()),
                        Err(_) => comparer.count(crate::compare::Outcome::Error),
                    }
                    reply
                };
                Sink::Hook(Box::new(hook), client_tx)
            }
        };
        let job = Job { payload, replies: 1, pick: 0, sink };
        match path {
            Path::Shared => self.send_shared(proxy, side, job).await,
            Path::Dedicated(side) => {
                if let Err(err) = self.ensure_dedicated(proxy, side).await {
                    job.fail(&err);
                } else if let Some(conn) = &self.dedicated[side.index()] {
                    if conn.send(job).await.is_err() && self.pinned() {
                        // Its database or tracking state is gone with it: say so and close,
                        // as a direct connection to Redis would have been closed.
                        self.dedicated[side.index()] = None;
                        self.queue(Out::Pending(client_rx, tag)).await?;
                        return Ok(Flow::Close);
                    }
                }
            }
        }
        match mirror_rx {
            Some(mirror) => {
                let limit = proxy.mirror_timeout();
                self.queue(Out::Mirrored { reply: client_rx, mirror, limit, tag }).await
            }
            None => self.queue(Out::Pending(client_rx, tag)).await,
        }
    }

    /// Splits a multi-key command whose keys live on both sides into one command per side,
    /// and has the writer merge the replies.
    async fn split(
        &mut self,
        proxy: &Proxy,
        routing: &Routing,
        info: Option<&CommandInfo>,
        kind: MergeKind,
        req: Request,
        keys: &[usize],
    ) -> Result<Flow, Gone> {
        proxy.metrics.split.inc();
        let write = info.is_some_and(|i| i.flags.contains(Flags::WRITE));
        let cmd = info.map_or(OTHER_ID, |i| i.id);
        // MSET carries a value after each key.
        let with_value = kind == MergeKind::AllOk;
        let mut per_side: [(Vec<Bytes>, Vec<usize>); 2] = Default::default();
        for (n, &k) in keys.iter().enumerate() {
            let side = routing.side_of(req.arg(k));
            let (args, positions) = &mut per_side[side.index()];
            if args.is_empty() {
                args.push(req.arg_bytes(0));
            }
            args.push(req.arg_bytes(k));
            if with_value {
                args.push(req.arg_bytes(k + 1));
            }
            positions.push(n);
        }
        let mut parts = Vec::with_capacity(2);
        // Sync mode, or any key in a moving slot: the reply waits for every part's mirror.
        let sync = write
            && routing.mirror != MirrorMode::Off
            && (routing.mirror == MirrorMode::Sync || keys.iter().any(|&k| routing.sync_for(req.arg(k))));
        let mut mirror_waits = Vec::new();
        let path = if self.pinned() { Path::Dedicated(Side::Source) } else { Path::Shared };
        self.switch_path(path).await?;
        for side in [Side::Source, Side::Target] {
            let (args, positions) = std::mem::take(&mut per_side[side.index()]);
            if args.is_empty() {
                continue;
            }
            let sub = Request::from_args(&args);
            let (tx, rx) = oneshot::channel();
            let sink = if write && routing.mirror != MirrorMode::Off {
                let mirrors = proxy.mirrors();
                let db = self.db;
                let done = sync.then(|| {
                    let (done_tx, done_rx) = oneshot::channel();
                    mirror_waits.push(done_rx);
                    done_tx
                });
                let enqueue = move |frame: &Bytes| mirrors.enqueue_effect(side.other(), cmd, &sub, frame, db, done);
                self.mirror_sink(proxy, path, None, enqueue, tx)
            } else {
                Sink::Reply(tx)
            };
            let job = Job { payload: reply::command(&args), replies: 1, pick: 0, sink };
            if self.pinned() {
                match self.ensure_dedicated(proxy, side).await {
                    Ok(()) => {
                        if let Some(conn) = &self.dedicated[side.index()] {
                            let _ = conn.send(job).await;
                        }
                    }
                    Err(e) => job.fail(&e),
                }
            } else {
                // Not gathered: what was gathered goes first, so nothing is overtaken.
                self.send_gathered().await;
                self.backend(proxy, side).shared(self.proto, self.id).send(job).await;
            }
            proxy.metrics.served[side.index()].inc();
            parts.push((positions, rx));
        }
        let limit = proxy.mirror_timeout();
        self.queue(Out::Merge { kind, total: keys.len(), parts, mirrors: mirror_waits, limit }).await
    }

    async fn multi(&mut self) -> Result<Flow, Gone> {
        if self.in_multi {
            return self.error("ERR MULTI calls can not be nested").await;
        }
        self.in_multi = true;
        self.multi_poisoned = false;
        self.queued.clear();
        self.reply(reply::ok()).await
    }

    async fn discard(&mut self, proxy: &Proxy) -> Result<Flow, Gone> {
        if !self.in_multi {
            return self.error("ERR DISCARD without MULTI").await;
        }
        self.in_multi = false;
        self.queued.clear();
        self.forget_watch(proxy).await;
        self.reply(reply::ok()).await
    }

    /// Runs the queued transaction as one `MULTI ... EXEC` block on one side: the side
    /// holding the WATCH, else the side of the first key. With mirroring on, a transaction
    /// that committed is replayed on the other side as one block too.
    async fn exec(&mut self, proxy: &Proxy) -> Result<Flow, Gone> {
        if !self.in_multi {
            return self.error("ERR EXEC without MULTI").await;
        }
        self.in_multi = false;
        let cmds = std::mem::take(&mut self.queued);
        if std::mem::take(&mut self.multi_poisoned) {
            self.forget_watch(proxy).await;
            return self.error("EXECABORT Transaction discarded because of previous errors.").await;
        }
        if let Some(s) = self.watching {
            if !self.dedicated[s.index()].as_ref().is_some_and(|d| d.is_alive()) {
                // The connection holding the WATCH is gone, and with it the watch: the
                // transaction cannot know whether the keys changed, so it is aborted as a
                // failed WATCH would abort it.
                self.watching = None;
                return self.reply(Bytes::from_static(b"*-1\r\n")).await;
            }
        }
        let (routing, _routing_guard) = proxy.route();
        let table = proxy.commands.load();
        let mut side = self.watching;
        let mut write = false;
        let mut first_sync = None;
        for cmd in &cmds {
            let argv = cmd.argv();
            let Some(info) = table.lookup(&argv) else { continue };
            write |= info.flags.contains(Flags::WRITE);
            if let Some(&k) = info.key_indices(&argv).first() {
                let key_side = routing.side_of(argv[k]);
                match side {
                    None => side = Some(key_side),
                    Some(s) if s != key_side && routing.has_target => proxy.metrics.cross_side.inc(),
                    _ => {}
                }
                first_sync.get_or_insert(routing.sync_for(argv[k]));
            }
        }
        let side = if routing.has_target { side.unwrap_or_else(|| routing.keyless_side()) } else { Side::Source };
        let path = match self.watching {
            Some(s) => Path::Dedicated(s),
            None if self.pinned() => Path::Dedicated(side),
            None => Path::Shared,
        };
        self.watching = None;

        let mut payload = bytes::BytesMut::new();
        payload.extend_from_slice(&reply::command(&["MULTI"]));
        for cmd in &cmds {
            payload.extend_from_slice(cmd.raw());
        }
        payload.extend_from_slice(&reply::command(&["EXEC"]));
        let n = cmds.len() as u32;
        let mirror = (write && routing.has_target && routing.mirror != MirrorMode::Off)
            .then(|| routing.mirror == MirrorMode::Sync || first_sync.unwrap_or(false) || routing.moving.is_some());

        self.switch_path(path).await?;
        let (client_tx, client_rx) = oneshot::channel();
        let mut mirror_rx = None;
        let sink = match mirror {
            None => Sink::Reply(client_tx),
            Some(sync) => {
                let done = sync.then(|| {
                    let (tx, rx) = oneshot::channel();
                    mirror_rx = Some(rx);
                    tx
                });
                let mirrors = proxy.mirrors();
                let db = self.db;
                let enqueue = move |frame: &Bytes| mirrors.enqueue_transaction(side.other(), &cmds, frame, db, done);
                self.mirror_sink(proxy, path, None, enqueue, client_tx)
            }
        };
        let job = Job { payload: payload.freeze(), replies: n + 2, pick: n + 1, sink };
        proxy.metrics.served[side.index()].inc();
        let exec_id = proxy.commands.load().lookup(&[b"exec".as_slice()]).map(|i| i.id).unwrap_or(OTHER_ID);
        let tag = Tag::new(exec_id, side, self.read_at);
        match path {
            Path::Shared => {
                self.send_gathered().await;
                self.backend(proxy, side).shared(self.proto, self.id).send(job).await
            }
            Path::Dedicated(s) => match self.ensure_dedicated(proxy, s).await {
                Ok(()) => {
                    if let Some(conn) = &self.dedicated[s.index()] {
                        let _ = conn.send(job).await;
                    }
                }
                Err(e) => job.fail(&e),
            },
        }
        match mirror_rx {
            Some(mirror) => {
                self.queue(Out::Mirrored { reply: client_rx, mirror, limit: proxy.mirror_timeout(), tag }).await
            }
            None => self.queue(Out::Pending(client_rx, tag)).await,
        }
    }

    /// WATCH runs on a dedicated connection to the side of its first key; the transaction
    /// that follows runs there too.
    async fn watch(&mut self, proxy: &Proxy, info: Option<&CommandInfo>, req: Request) -> Result<Flow, Gone> {
        let (routing, _routing_guard) = proxy.route();
        let side = match (info, routing.has_target) {
            (Some(i), true) => {
                let argv = req.argv();
                i.key_indices(&argv).first().map(|&k| routing.side_of(argv[k])).unwrap_or(Side::Source)
            }
            _ => Side::Source,
        };
        if let Some(prev) = self.watching {
            if prev != side {
                return self.error("ERR tandem: WATCH of keys served by different backends is not supported").await;
            }
        }
        self.watching = Some(side);
        let cmd = info.map(|i| i.id).unwrap_or(OTHER_ID);
        self.send(proxy, req, side, Path::Dedicated(side), Also::Nothing, cmd).await
    }

    async fn unwatch(&mut self, proxy: &Proxy) -> Result<Flow, Gone> {
        self.forget_watch(proxy).await;
        self.reply(reply::ok()).await
    }

    /// Drops the client's WATCH on the backend, if it has one.
    async fn forget_watch(&mut self, _proxy: &Proxy) {
        if let Some(side) = self.watching.take() {
            if let Some(conn) = &self.dedicated[side.index()] {
                let _ = conn.send(Job::discard(reply::command(&["UNWATCH"]))).await;
            }
        }
    }

    /// True while an earlier delayed mirror effect of this client (see `mirror_tail`) is not
    /// queued yet.
    fn mirror_waiting(&mut self) -> bool {
        let Some(tail) = &mut self.mirror_tail else { return false };
        if matches!(tail.try_recv(), Err(oneshot::error::TryRecvError::Empty)) {
            return true;
        }
        self.mirror_tail = None;
        false
    }

    /// The sink for a mirrored write sent over `path`: `enqueue` queues its effect as the
    /// reply is read, on the connection's reader, unless it must wait, for a fence through
    /// `fence`'s pooled connections (a blocking pop) or, on a dedicated connection, for this
    /// client's earlier delayed effect ([`Session::delayed_mirror`]).
    fn mirror_sink(
        &mut self,
        proxy: &Proxy,
        path: Path,
        fence: Option<Side>,
        enqueue: impl FnOnce(&Bytes) + Send + 'static,
        client: oneshot::Sender<Reply>,
    ) -> Sink {
        if fence.is_some() || (matches!(path, Path::Dedicated(_)) && self.mirror_waiting()) {
            return self.delayed_mirror(proxy, fence, enqueue, client);
        }
        let hook = move |reply: Reply| {
            if let Ok(frame) = &reply {
                enqueue(frame);
            }
            reply
        };
        Sink::Hook(Box::new(hook), client)
    }

    /// The sink for a mirrored write on a dedicated connection whose effect cannot be queued
    /// as its reply is read: after a fence through `fence`'s pooled connections (a blocking
    /// pop, see [`fenced_mirror`]), and after this client's previous delayed effect.
    fn delayed_mirror(
        &mut self,
        proxy: &Proxy,
        fence: Option<Side>,
        enqueue: impl FnOnce(&Bytes) + Send + 'static,
        client: oneshot::Sender<Reply>,
    ) -> Sink {
        let (tx, rx) = oneshot::channel();
        let (queued_tx, queued_rx) = oneshot::channel();
        let after = self.mirror_tail.replace(queued_rx);
        let order = Order {
            fence: fence.map(|side| proxy.backend(side)),
            limit: proxy.mirror_timeout(),
            after,
            queued: queued_tx,
            metrics: proxy.metrics.clone(),
        };
        tokio::spawn(fenced_mirror(rx, order, enqueue, client));
        Sink::Reply(tx)
    }

    async fn ensure_dedicated(&mut self, proxy: &Proxy, side: Side) -> Result<(), BackendError> {
        if self.dedicated[side.index()].as_ref().is_some_and(|d| d.is_alive()) {
            return Ok(());
        }
        let hs = self.handshake();
        let conn = self.backend(proxy, side).dedicated(&hs, Some(self.pushes.clone())).await?;
        proxy.metrics.dedicated_opened.inc();
        self.dedicated[side.index()] = Some(conn);
        Ok(())
    }

    /// Sends a state change to the dedicated connections, so they stay in step with the
    /// session (their replies are not the client's).
    async fn sync_dedicated(&mut self, cmd: Request) {
        let hs = self.handshake();
        for conn in self.dedicated.iter_mut().flatten() {
            *conn.handshake_mut() = hs.clone();
            let _ = conn.send(Job::discard(cmd.raw().clone())).await;
        }
    }

    async fn auth(&mut self, proxy: &Proxy, req: &Request) -> Result<Flow, Gone> {
        if self.in_multi {
            return self.refuse_in_multi("ERR Command not allowed inside a transaction").await;
        }
        let policy = proxy.policy.load();
        let (user, pass) = match req.argc() {
            2 => (b"default".as_slice(), req.arg(1)),
            3 => (req.arg(1), req.arg(2)),
            _ => return self.error("ERR wrong number of arguments for 'auth' command").await,
        };
        if !policy.users.enabled() {
            return self
                .error("ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?")
                .await;
        }
        match policy.users.verify(user, pass) {
            Some(u) => {
                self.authenticated = true;
                self.read_only = u.read_only;
                self.reply(reply::ok()).await
            }
            None => self.wrong_password(proxy).await,
        }
    }

    /// Refuses a password. The first failure on a connection is answered at once (a typo);
    /// each further one waits twice as long as the last (100 ms, 200 ms, ... up to 2 s), which
    /// makes guessing over one connection slow without delaying other clients.
    async fn wrong_password(&mut self, proxy: &Proxy) -> Result<Flow, Gone> {
        proxy.metrics.auth_failures.inc();
        self.auth_failures = self.auth_failures.saturating_add(1);
        if self.auth_failures > 1 {
            let ms = 100u64.saturating_mul(1 << (self.auth_failures - 2).min(5)).min(2000);
            // Earlier commands and replies go out before the pause, not after it.
            self.send_gathered().await;
            self.out.flush().map_err(|_| Gone)?;
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        }
        self.error("WRONGPASS invalid username-password pair or user is disabled.").await
    }

    async fn hello(&mut self, proxy: &Proxy, req: &Request) -> Result<Flow, Gone> {
        if self.in_multi {
            return self.refuse_in_multi("ERR Command not allowed inside a transaction").await;
        }
        let mut proto = self.proto;
        let mut i = 1;
        if req.argc() > 1 {
            proto = match req.arg(1) {
                b"2" => Protocol::Resp2,
                b"3" => Protocol::Resp3,
                other if std::str::from_utf8(other).ok().and_then(|s| s.parse::<i64>().ok()).is_some() => {
                    return self.error("NOPROTO sorry, this protocol version is not supported.").await
                }
                _ => return self.error("ERR Protocol version is not an integer or out of range").await,
            };
            i = 2;
        }
        let mut name = None;
        let mut authed_as = None;
        while i < req.argc() {
            if req.arg_is(i, "auth") && i + 2 < req.argc() {
                let policy = proxy.policy.load();
                if !policy.users.enabled() {
                    return self
                        .error("ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?")
                        .await;
                }
                match policy.users.verify(req.arg(i + 1), req.arg(i + 2)) {
                    Some(u) => authed_as = Some(u.read_only),
                    None => return self.wrong_password(proxy).await,
                }
                i += 3;
            } else if req.arg_is(i, "setname") && i + 1 < req.argc() {
                if let Err(e) = validate_name(req.arg(i + 1)) {
                    return self.error(e).await;
                }
                name = Some(req.arg_bytes(i + 1));
                i += 2;
            } else {
                return self
                    .error(&format!("ERR Syntax error in HELLO option '{}'", String::from_utf8_lossy(req.arg(i))))
                    .await;
            }
        }
        if let Some(read_only) = authed_as {
            self.authenticated = true;
            self.read_only = read_only;
        }
        if !self.authenticated {
            return self
                .error("NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time")
                .await;
        }
        if name.is_some() {
            self.name = name;
        }
        if proto != self.proto {
            // The new protocol uses other connections: earlier commands finish first.
            self.barrier().await?;
            self.proto = proto;
            // Dedicated connections speak the old protocol: let them finish and open new
            // ones when needed.
            self.dedicated = [None, None];
        }
        let version = self.backend(proxy, Side::Source).server_version().unwrap_or("7.0.0").to_string();
        let fields = [
            ("server", HelloValue::Str("redis")),
            ("version", HelloValue::Str(&version)),
            ("proto", HelloValue::Int(proto.version() as i64)),
            ("id", HelloValue::Int(self.id as i64)),
            ("mode", HelloValue::Str("standalone")),
            ("role", HelloValue::Str("master")),
            ("modules", HelloValue::EmptyArray),
        ];
        self.reply(reply::hello(proto, &fields)).await
    }

    async fn select(&mut self, proxy: &Proxy, req: &Request) -> Result<Flow, Gone> {
        if self.in_multi {
            return self.refuse_in_multi("ERR tandem: SELECT inside MULTI is not supported; SELECT before MULTI").await;
        }
        if req.argc() != 2 {
            return self.error("ERR wrong number of arguments for 'select' command").await;
        }
        let Some(db) = std::str::from_utf8(req.arg(1)).ok().and_then(|s| s.parse::<u32>().ok()) else {
            return self.error("ERR value is not an integer or out of range").await;
        };
        if db == self.db {
            return self.reply(reply::ok()).await;
        }
        if db == 0 {
            self.db = 0;
            let hs = self.handshake();
            for side in [Side::Source, Side::Target] {
                if let Some(conn) = &mut self.dedicated[side.index()] {
                    *conn.handshake_mut() = hs.clone();
                    let url_db = proxy.backend(side).settings().db.to_string();
                    let _ = conn.send(Job::discard(reply::command(&["SELECT", url_db.as_str()]))).await;
                }
            }
            return self.reply(reply::ok()).await;
        }
        // Ask the source, so an out-of-range index gets the backend's own error and the
        // session only changes when the backend accepted it.
        let side = Side::Source;
        self.switch_path(Path::Dedicated(side)).await?;
        if let Err(err) = self.ensure_dedicated(proxy, side).await {
            return self.reply(err.to_resp()).await;
        }
        let (job, rx) = Job::single(req.raw().clone());
        let sent = match &self.dedicated[side.index()] {
            Some(conn) => conn.send(job).await,
            None => return self.error("ERR tandem: dedicated connection unavailable").await,
        };
        if let Err(err) = sent {
            return self.reply(err.to_resp()).await;
        }
        match rx.await {
            Ok(Ok(frame)) => {
                if !reply::is_error(&frame) {
                    self.db = db;
                    let hs = self.handshake();
                    for (i, conn) in self.dedicated.iter_mut().enumerate() {
                        if let Some(conn) = conn {
                            *conn.handshake_mut() = hs.clone();
                            if i != side.index() {
                                let _ = conn.send(Job::discard(req.raw().clone())).await;
                            }
                        }
                    }
                }
                self.reply(frame).await
            }
            Ok(Err(err)) => self.reply(err.to_resp()).await,
            Err(_) => self.error("ERR tandem: dedicated connection lost").await,
        }
    }

    async fn client_setname(&mut self, req: &Request) -> Result<Flow, Gone> {
        if req.argc() != 3 {
            return self.error("ERR wrong number of arguments for 'client|setname' command").await;
        }
        if let Err(e) = validate_name(req.arg(2)) {
            return self.error(e).await;
        }
        let name = req.arg_bytes(2);
        self.name = (!name.is_empty()).then_some(name);
        self.sync_dedicated(req.clone()).await;
        self.reply(reply::ok()).await
    }

    async fn reset(&mut self, proxy: &Proxy) -> Result<Flow, Gone> {
        self.barrier().await?;
        self.proto = Protocol::Resp2;
        self.db = 0;
        self.name = None;
        self.in_multi = false;
        self.queued.clear();
        self.multi_poisoned = false;
        self.watching = None;
        self.tracking = false;
        self.dedicated = [None, None];
        self.last_path = Path::Shared;
        let policy = proxy.policy.load();
        self.authenticated = !policy.users.enabled();
        self.read_only = false;
        self.reply(reply::simple("RESET")).await
    }

    /// Turns the connection into a pass-through to a dedicated backend connection for
    /// Pub/Sub. Requests are still parsed and checked; replies and pushes flow back as the
    /// backend sends them.
    async fn enter_pipe(&mut self, proxy: &Proxy, side: Side, req: Request) -> Result<Flow, Gone> {
        self.barrier().await?;
        let stream = match self.backend(proxy, side).raw(&self.handshake()).await {
            Ok(s) => s,
            Err(err) => return self.reply(err.to_resp()).await,
        };
        proxy.metrics.dedicated_opened.inc();
        self.dedicated = [None, None];
        let (rd, wr) = stream.into_split();
        self.out.push(Out::Pipe(rd)).map_err(|_| Gone)?;
        self.out.flush().map_err(|_| Gone)?;
        self.pipe = Some(wr);
        self.handle_piped(proxy, req).await
    }

    async fn handle_piped(&mut self, proxy: &Proxy, req: Request) -> Result<Flow, Gone> {
        let table = proxy.commands.load();
        let argv = req.argv();
        let info = table.lookup(&argv);
        let name = info.map(|i| i.name.as_ref()).unwrap_or("");
        let refused = info.is_some_and(|i| i.flags.contains(Flags::DANGEROUS)) && !proxy.policy.load().allows(name)
            || matches!(name, "auth" | "hello" | "select" | "client|reply");
        if refused {
            // Replies on a pass-through cannot be interleaved by the proxy; closing is the
            // only answer that cannot be misread.
            tracing::info!(client = self.id, command = name, "closing Pub/Sub client after a refused command");
            return Ok(Flow::Close);
        }
        let Some(pipe) = &mut self.pipe else {
            return Ok(Flow::Close);
        };
        if pipe.write_all(req.raw()).await.is_err() {
            return Ok(Flow::Close);
        }
        Ok(Flow::Continue)
    }
}

fn is_script_management(name: &str) -> bool {
    matches!(
        name,
        "script|load" | "script|flush" | "function|load" | "function|delete" | "function|flush" | "function|restore"
    )
}

fn validate_name(name: &[u8]) -> Result<(), &'static str> {
    if name.iter().any(|&b| b <= b' ' || b > b'~') {
        return Err("ERR Client names cannot contain spaces, newlines or special characters.");
    }
    Ok(())
}

/// Configuration parameters whose values are secrets of the backend.
const SECRET_PARAMETERS: [&[u8]; 4] =
    [b"requirepass", b"masterauth", b"tls-key-file-pass", b"tls-client-key-file-pass"];

/// What a delayed mirror effect waits for before it is queued.
struct Order {
    /// The serving backend to fence (a blocking pop), if any.
    fence: Option<Arc<Backend>>,
    /// Longest wait for the fence (`mirror.timeout`).
    limit: std::time::Duration,
    /// The client's previous delayed effect.
    after: Option<oneshot::Receiver<()>>,
    /// Dropped once this effect is queued (or known never to be).
    queued: oneshot::Sender<()>,
    metrics: Arc<crate::metrics::Metrics>,
}

/// Mirrors a blocking pop (or move) once the writes that fed it are queued.
///
/// A blocked BLPOP is answered because another connection pushed to its key. Redis writes
/// the push's reply to the pusher's connection and the pop's to the dedicated connection,
/// and tandem reads the two on different tasks: queued straight away, the pop's effect
/// could reach the mirror before the push, and the mirror would keep the element, to be
/// popped again after cutover. So the effect waits for a PING through every pooled
/// connection to the serving backend: once those are answered, every reply Redis sent on
/// them before the pop's has been read and its effect queued. (Pushes Redis ran after the
/// pop may then be queued first; the effect removes the popped value, not the head, so a
/// push onto the other end or of another value does no harm: `mirror::effect`.) The wait
/// is bounded by `mirror.timeout`;
/// after that the effect is queued anyway and `tandem_mirror_pop_fence_late_total` counts
/// it. Writes the client sends on the same dedicated connection meanwhile wait their turn
/// (`order.after`), and the client hears each reply only once its effect is queued, like
/// every mirrored write. Pushes through other tandem instances are not covered.
async fn fenced_mirror(
    reply: oneshot::Receiver<Reply>,
    order: Order,
    enqueue: impl FnOnce(&Bytes),
    client: oneshot::Sender<Reply>,
) {
    let reply = reply.await;
    let frame = match &reply {
        Ok(Ok(frame)) => Some(frame),
        _ => None,
    };
    if let (Some(serving), Some(frame)) = (&order.fence, frame) {
        if !reply::is_null(frame) && !reply::is_error(frame) {
            let started = std::time::Instant::now();
            if tokio::time::timeout(order.limit, serving.fence()).await.is_err() {
                order.metrics.pop_fence_late.inc();
                tracing::debug!(limit = ?order.limit, "blocking pop mirrored before its fence was answered");
            }
            order.metrics.pop_fence.observe(started.elapsed().as_secs_f64());
        }
    }
    // Even when this write has nothing to queue, the next must not pass the previous one.
    if let Some(previous) = order.after {
        let _ = previous.await;
    }
    if let Some(frame) = frame {
        enqueue(frame);
    }
    drop(order.queued);
    // A lost reply (Err) drops `client`: the client gets the same error as without the wait.
    if let Ok(reply) = reply {
        let _ = client.send(reply);
    }
}

/// A `CONFIG GET` reply (name/value pairs, RESP2 array or RESP3 map) with the values of
/// [`SECRET_PARAMETERS`] replaced by `(redacted)`; `None` when it holds none of them.
fn redact_config(frame: &Bytes) -> Option<Bytes> {
    use crate::proto::value::{parse, Value};
    let secret =
        |name: &Value| name.as_bytes().is_some_and(|n| SECRET_PARAMETERS.iter().any(|s| n.eq_ignore_ascii_case(s)));
    let pairs: Vec<(Value, Value)> = match parse(frame)? {
        Value::Array(items) if items.len() % 2 == 0 => {
            let mut it = items.into_iter();
            std::iter::from_fn(|| Some((it.next()?, it.next()?))).collect()
        }
        Value::Map(pairs) => pairs,
        _ => return None,
    };
    if !pairs.iter().any(|(n, _)| secret(n)) {
        return None;
    }
    let mut out = bytes::BytesMut::with_capacity(frame.len());
    let map = frame.first() == Some(&b'%');
    out.extend_from_slice(
        format!("{}{}\r\n", if map { '%' } else { '*' }, if map { pairs.len() } else { pairs.len() * 2 }).as_bytes(),
    );
    for (name, value) in &pairs {
        reply::put_bulk(&mut out, name.as_bytes().unwrap_or_default());
        let v: &[u8] = if secret(name) { b"(redacted)" } else { value.as_bytes().unwrap_or_default() };
        reply::put_bulk(&mut out, v);
    }
    Some(out.freeze())
}

/// The command id of `CONFIG GET`, whose replies are redacted.
fn config_get_id() -> u16 {
    static ID: std::sync::OnceLock<u16> = std::sync::OnceLock::new();
    *ID.get_or_init(|| crate::proto::commands::builtin_id("config|get").expect("CONFIG GET is built in"))
}

#[cfg(test)]
mod redact_tests {
    use super::*;

    #[test]
    fn config_get_replies_lose_only_the_secret_values() {
        let r2 = Bytes::from_static(b"*4\r\n$11\r\nrequirepass\r\n$3\r\npw!\r\n$7\r\nmaxconn\r\n$2\r\n10\r\n");
        let out = redact_config(&r2).unwrap();
        assert_eq!(&out[..], b"*4\r\n$11\r\nrequirepass\r\n$10\r\n(redacted)\r\n$7\r\nmaxconn\r\n$2\r\n10\r\n");
        let r3 = Bytes::from_static(b"%1\r\n$10\r\nmasterauth\r\n$2\r\npw\r\n");
        assert_eq!(&redact_config(&r3).unwrap()[..], b"%1\r\n$10\r\nmasterauth\r\n$10\r\n(redacted)\r\n");
        assert_eq!(redact_config(&Bytes::from_static(b"*2\r\n$4\r\nsave\r\n$0\r\n\r\n")), None);
        assert_eq!(redact_config(&Bytes::from_static(b"-ERR nope\r\n")), None);
    }
}
