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
//! When a client moves between the shared and the dedicated connection, the reader first
//! waits until every earlier reply is in ([`writer::Out::Barrier`]): the two connections are
//! independent, and without the wait a command could overtake one sent before it.

pub mod auth;
mod writer;

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};

use crate::backend::{Backend, BackendError, DedicatedConn, Handshake, Job, Sink};
use crate::proto::commands::Flags;
use crate::proto::reply::{self, HelloValue, Protocol};
use crate::proto::request::{self, Request};
use crate::server::Proxy;
use writer::Out;

/// Which backend connection the previous request went to.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Path {
    Shared,
    Dedicated,
}

/// What the reader should do after a request.
enum Flow {
    Continue,
    Close,
}

/// Per-connection state, replayed on any backend connection the client later uses.
struct Session {
    id: u64,
    proto: Protocol,
    db: u32,
    name: Option<Bytes>,
    authenticated: bool,
    read_only: bool,
    in_multi: bool,
    /// A command inside MULTI was refused by the proxy: EXEC must abort, as Redis would.
    multi_poisoned: bool,
    watching: bool,
    tracking: bool,
    last_path: Path,
    dedicated: Option<DedicatedConn>,
    /// Pub/Sub pass-through: requests are written here as they are.
    pipe: Option<OwnedWriteHalf>,
    out: mpsc::Sender<Out>,
    pushes: mpsc::UnboundedSender<Bytes>,
}

/// Serves one client until it disconnects, misbehaves, or the proxy shuts down.
pub async fn serve(
    stream: TcpStream,
    proxy: Arc<Proxy>,
    id: u64,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let policy = proxy.policy.load_full();
    let (mut rd, wr) = stream.into_split();
    let (out_tx, out_rx) = mpsc::channel(policy.max_pipeline.max(1));
    let (push_tx, push_rx) = mpsc::unbounded_channel();
    let writer = tokio::spawn(writer::run(wr, out_rx, push_rx));

    let mut session = Session {
        id,
        proto: Protocol::Resp2,
        db: 0,
        name: None,
        authenticated: !policy.users.enabled(),
        read_only: false,
        in_multi: false,
        multi_poisoned: false,
        watching: false,
        tracking: false,
        last_path: Path::Shared,
        dedicated: None,
        pipe: None,
        out: out_tx,
        pushes: push_tx,
    };

    let mut buf = BytesMut::with_capacity(4096);
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
                    let _ = session
                        .out
                        .send(Out::Ready(reply::error(&e.client_message())))
                        .await;
                    break 'conn;
                }
            }
        }
        proxy.metrics.commands.inc_by(parsed);
        if buf.capacity() > 1 << 20 && buf.is_empty() {
            buf = BytesMut::with_capacity(4096);
        }

        let idle = proxy
            .policy
            .load()
            .idle_timeout
            .filter(|_| session.is_idle_checked());
        let read = async {
            match idle {
                Some(limit) => tokio::time::timeout(limit, rd.read_buf(&mut buf))
                    .await
                    .ok(),
                None => Some(rd.read_buf(&mut buf).await),
            }
        };
        tokio::select! {
            r = read => match r {
                None => {
                    tracing::debug!(client = id, "closing idle client");
                    break;
                }
                Some(Ok(0)) | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            _ = shutdown.changed() => break,
        }
    }
    let _ = session.out.send(Out::Close).await;
    if let Some(mut pipe) = session.pipe.take() {
        let _ = pipe.shutdown().await;
    }
    drop(session);
    let _ = writer.await;
}

/// The client's writer is gone (its socket failed): stop serving it.
struct Gone;

impl Session {
    /// Idle clients are closed only when nothing of theirs can legitimately be waiting.
    fn is_idle_checked(&self) -> bool {
        self.pipe.is_none() && self.last_path == Path::Shared && !self.in_multi && !self.watching
    }

    /// True while the client holds state that only its dedicated connection has.
    fn pinned(&self) -> bool {
        self.in_multi || self.watching || self.tracking || self.db != 0
    }

    async fn reply(&self, bytes: Bytes) -> Result<Flow, Gone> {
        self.out.send(Out::Ready(bytes)).await.map_err(|_| Gone)?;
        Ok(Flow::Continue)
    }

    async fn error(&self, text: &str) -> Result<Flow, Gone> {
        self.reply(reply::error(text)).await
    }

    /// Waits until every reply queued so far has been received from its backend.
    async fn barrier(&self) -> Result<(), Gone> {
        let (tx, rx) = oneshot::channel();
        self.out.send(Out::Barrier(tx)).await.map_err(|_| Gone)?;
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
        }
    }

    fn backend<'p>(&self, proxy: &'p Proxy) -> &'p Arc<Backend> {
        &proxy.source
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
        let blocking = info.is_some_and(|i| i.blocks(&argv));
        drop(argv);

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
                    .refuse_in_multi(
                        "ERR tandem: CLIENT REPLY is not supported: every request gets its reply",
                    )
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

        if flags.contains(Flags::SUBSCRIBE) && !self.in_multi {
            return self.enter_pipe(proxy, req).await;
        }

        // Track transaction and tracking state; the backend gives the real reply.
        match name {
            "multi" if !self.in_multi => {
                self.in_multi = true;
                self.multi_poisoned = false;
            }
            "exec" | "discard" if self.in_multi => {
                let poisoned = std::mem::take(&mut self.multi_poisoned);
                self.in_multi = false;
                self.watching = false;
                if poisoned {
                    // The backend queued the transaction; throw it away and answer as Redis.
                    self.forward(
                        proxy,
                        Request::from_args(&["DISCARD"]),
                        Path::Dedicated,
                        false,
                    )
                    .await?;
                    self.in_multi = false;
                    return if name == "exec" {
                        self.error("EXECABORT Transaction discarded because of previous errors.")
                            .await
                    } else {
                        self.reply(reply::ok()).await
                    };
                }
                return self.forward(proxy, req, Path::Dedicated, true).await;
            }
            "watch" if !self.in_multi => self.watching = true,
            "unwatch" => self.watching = false,
            "client|tracking" => self.tracking = !req.arg_is(2, "off"),
            "client|caching" | "client|no-evict" | "client|no-touch" => self.tracking = true,
            _ => {}
        }

        let path = if self.pinned() || blocking || name == "multi" {
            Path::Dedicated
        } else {
            Path::Shared
        };
        self.forward(proxy, req, path, true).await
    }

    /// Refuses a command; inside MULTI the refusal also dooms the transaction, as a
    /// queuing error does in Redis.
    async fn refuse_in_multi(&mut self, text: &str) -> Result<Flow, Gone> {
        if self.in_multi {
            self.multi_poisoned = true;
        }
        self.error(text).await
    }

    /// Sends a request down `path` and queues its reply (or discards it when
    /// `to_client` is false).
    async fn forward(
        &mut self,
        proxy: &Proxy,
        req: Request,
        path: Path,
        to_client: bool,
    ) -> Result<Flow, Gone> {
        self.switch_path(path).await?;
        let payload = req.raw().clone();
        let (job, rx) = if to_client {
            let (job, rx) = Job::single(payload);
            (job, Some(rx))
        } else {
            (
                Job {
                    payload,
                    replies: 1,
                    sink: Sink::Discard,
                },
                None,
            )
        };
        match path {
            Path::Shared => {
                self.backend(proxy)
                    .shared(self.proto, self.id)
                    .send(job)
                    .await
            }
            Path::Dedicated => {
                if let Err(err) = self.ensure_dedicated(proxy).await {
                    job.fail(&err);
                } else if let Some(conn) = &self.dedicated {
                    if conn.send(job).await.is_err() && self.pinned() {
                        // Its transaction or database state is gone with it: say so and close,
                        // as a direct connection to Redis would have been closed.
                        self.dedicated = None;
                        if let Some(rx) = rx {
                            self.out.send(Out::Pending(rx)).await.map_err(|_| Gone)?;
                        }
                        return Ok(Flow::Close);
                    }
                }
            }
        }
        if let Some(rx) = rx {
            self.out.send(Out::Pending(rx)).await.map_err(|_| Gone)?;
        }
        Ok(Flow::Continue)
    }

    async fn ensure_dedicated(&mut self, proxy: &Proxy) -> Result<(), BackendError> {
        if self.dedicated.as_ref().is_some_and(|d| d.is_alive()) {
            return Ok(());
        }
        let hs = self.handshake();
        let conn = self
            .backend(proxy)
            .dedicated(&hs, Some(self.pushes.clone()))
            .await?;
        proxy.metrics.dedicated_opened.inc();
        self.dedicated = Some(conn);
        Ok(())
    }

    /// Sends a state change to the dedicated connection, if there is one, so it stays in
    /// step with the session (its reply is not the client's).
    async fn sync_dedicated(&mut self, cmd: Request) {
        let hs = self.handshake();
        if let Some(conn) = &mut self.dedicated {
            *conn.handshake_mut() = hs;
            let _ = conn
                .send(Job {
                    payload: cmd.raw().clone(),
                    replies: 1,
                    sink: Sink::Discard,
                })
                .await;
        }
    }

    async fn auth(&mut self, proxy: &Proxy, req: &Request) -> Result<Flow, Gone> {
        if self.in_multi {
            return self
                .refuse_in_multi("ERR Command not allowed inside a transaction")
                .await;
        }
        let policy = proxy.policy.load();
        let (user, pass) = match req.argc() {
            2 => (b"default".as_slice(), req.arg(1)),
            3 => (req.arg(1), req.arg(2)),
            _ => {
                return self
                    .error("ERR wrong number of arguments for 'auth' command")
                    .await
            }
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
            None => {
                proxy.metrics.auth_failures.inc();
                self.error("WRONGPASS invalid username-password pair or user is disabled.")
                    .await
            }
        }
    }

    async fn hello(&mut self, proxy: &Proxy, req: &Request) -> Result<Flow, Gone> {
        if self.in_multi {
            return self
                .refuse_in_multi("ERR Command not allowed inside a transaction")
                .await;
        }
        let mut proto = self.proto;
        let mut i = 1;
        if req.argc() > 1 {
            proto = match req.arg(1) {
                b"2" => Protocol::Resp2,
                b"3" => Protocol::Resp3,
                other
                    if std::str::from_utf8(other)
                        .ok()
                        .and_then(|s| s.parse::<i64>().ok())
                        .is_some() =>
                {
                    return self
                        .error("NOPROTO sorry, this protocol version is not supported.")
                        .await
                }
                _ => {
                    return self
                        .error("ERR Protocol version is not an integer or out of range")
                        .await
                }
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
                    None => {
                        proxy.metrics.auth_failures.inc();
                        return self
                            .error("WRONGPASS invalid username-password pair or user is disabled.")
                            .await;
                    }
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
                    .error(&format!(
                        "ERR Syntax error in HELLO option '{}'",
                        String::from_utf8_lossy(req.arg(i))
                    ))
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
            self.proto = proto;
            // The dedicated connection speaks the old protocol: let it finish and open a
            // new one when needed.
            self.dedicated = None;
        }
        let version = self
            .backend(proxy)
            .server_version()
            .unwrap_or("7.0.0")
            .to_string();
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
            return self
                .refuse_in_multi(
                    "ERR tandem: SELECT inside MULTI is not supported; SELECT before MULTI",
                )
                .await;
        }
        if req.argc() != 2 {
            return self
                .error("ERR wrong number of arguments for 'select' command")
                .await;
        }
        let Some(db) = std::str::from_utf8(req.arg(1))
            .ok()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            return self
                .error("ERR value is not an integer or out of range")
                .await;
        };
        if db == self.db {
            return self.reply(reply::ok()).await;
        }
        if db == 0 {
            self.db = 0;
            let url_db = self.backend(proxy).settings().db.to_string();
            self.sync_dedicated(Request::from_args(&["SELECT", url_db.as_str()]))
                .await;
            return self.reply(reply::ok()).await;
        }
        // Ask the backend, so an out-of-range index gets the backend's own error and the
        // session only changes when the backend accepted it.
        self.switch_path(Path::Dedicated).await?;
        if let Err(err) = self.ensure_dedicated(proxy).await {
            return self.reply(err.to_resp()).await;
        }
        let (job, rx) = Job::single(req.raw().clone());
        let sent = match &self.dedicated {
            Some(conn) => conn.send(job).await,
            None => {
                return self
                    .error("ERR tandem: dedicated connection unavailable")
                    .await
            }
        };
        if let Err(err) = sent {
            return self.reply(err.to_resp()).await;
        }
        match rx.await {
            Ok(Ok(frame)) => {
                if !reply::is_error(&frame) {
                    self.db = db;
                    let hs = self.handshake();
                    if let Some(conn) = &mut self.dedicated {
                        *conn.handshake_mut() = hs;
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
            return self
                .error("ERR wrong number of arguments for 'client|setname' command")
                .await;
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
        self.multi_poisoned = false;
        self.watching = false;
        self.tracking = false;
        self.dedicated = None;
        self.last_path = Path::Shared;
        let policy = proxy.policy.load();
        self.authenticated = !policy.users.enabled();
        self.read_only = false;
        self.reply(reply::simple("RESET")).await
    }

    /// Turns the connection into a pass-through to a dedicated backend connection for
    /// Pub/Sub. Requests are still parsed and checked; replies and pushes flow back as the
    /// backend sends them.
    async fn enter_pipe(&mut self, proxy: &Proxy, req: Request) -> Result<Flow, Gone> {
        self.barrier().await?;
        let stream = match self.backend(proxy).raw(&self.handshake()).await {
            Ok(s) => s,
            Err(err) => return self.reply(err.to_resp()).await,
        };
        proxy.metrics.dedicated_opened.inc();
        self.dedicated = None;
        let (rd, wr) = stream.into_split();
        self.out.send(Out::Pipe(rd)).await.map_err(|_| Gone)?;
        self.pipe = Some(wr);
        self.handle_piped(proxy, req).await
    }

    async fn handle_piped(&mut self, proxy: &Proxy, req: Request) -> Result<Flow, Gone> {
        let table = proxy.commands.load();
        let argv = req.argv();
        let info = table.lookup(&argv);
        let name = info.map(|i| i.name.as_ref()).unwrap_or("");
        let refused = info.is_some_and(|i| i.flags.contains(Flags::DANGEROUS))
            && !proxy.policy.load().allows(name)
            || matches!(name, "auth" | "hello" | "select" | "client|reply");
        if refused {
            // Replies on a pass-through cannot be interleaved by the proxy; closing is the
            // only answer that cannot be misread.
            tracing::info!(
                client = self.id,
                command = name,
                "closing Pub/Sub client after a refused command"
            );
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

fn validate_name(name: &[u8]) -> Result<(), &'static str> {
    if name.iter().any(|&b| b <= b' ' || b > b'~') {
        return Err("ERR Client names cannot contain spaces, newlines or special characters.");
    }
    Ok(())
}
