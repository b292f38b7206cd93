//! Opening a backend connection: TCP connect within a bounded time, then the handshake that
//! authenticates with the backend's own credentials (never the client's) and replays the
//! per-connection state a client asked for (protocol, database, name).

use bytes::{BufMut, BytesMut};
use redis_protocol::resp3::decode::complete::decode as decode3;
use redis_protocol::resp3::types::OwnedFrame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::tls::BackendStream;
use super::{BackendError, BackendSettings};
use crate::proto::reply::{self, Protocol};

/// Per-connection state to establish on a new backend connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handshake {
    pub proto: Protocol,
    /// Database to select; `None` keeps the backend URL's database.
    pub db: Option<u32>,
    /// `CLIENT SETNAME` value, if the client set one.
    pub name: Option<bytes::Bytes>,
    /// The client's `CLIENT TRACKING ON ...` command, replayed so keys served by either
    /// backend send invalidations.
    pub tracking: Option<bytes::Bytes>,
}

impl Handshake {
    pub fn pooled(proto: Protocol) -> Handshake {
        Handshake { proto, db: None, name: None, tracking: None }
    }
}

/// Connects and performs the handshake. Returns the stream and the server version the
/// backend reported, if it did.
pub async fn connect(
    settings: &BackendSettings,
    hs: &Handshake,
) -> Result<(BackendStream, Option<String>), BackendError> {
    let Some(s) = settings.sentinels() else { return connect_to(settings, hs, settings.addr.clone()).await };
    // Behind sentinels: if the master switched while this connection was being made, it
    // may lead to the demoted one, and the switch would not be noticed on it. Start over.
    let mut tries = 0;
    loop {
        let epoch = s.epoch();
        let addr = s.master().await.map_err(|e| BackendError::unavailable(&settings.name, e))?;
        let result = connect_to(settings, hs, addr).await;
        tries += 1;
        if tries < 3 && epoch.has_changed().unwrap_or(false) {
            continue;
        }
        return result;
    }
}

async fn connect_to(
    settings: &BackendSettings,
    hs: &Handshake,
    addr: String,
) -> Result<(BackendStream, Option<String>), BackendError> {
    let name = &settings.name;
    let suspect = || {
        if let Some(s) = settings.sentinels() {
            s.suspect();
        }
    };
    let tcp = match timeout(settings.connect_timeout, TcpStream::connect(&addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            suspect();
            return Err(BackendError::unavailable(name, format!("connect {addr}: {e}")));
        }
        Err(_) => {
            suspect();
            return Err(BackendError::unavailable(
                name,
                format!("connect {addr}: timed out after {:?}", settings.connect_timeout),
            ));
        }
    };
    let _ = tcp.set_nodelay(true);
    let mut stream = match &settings.tls {
        None => BackendStream::Tcp(tcp),
        Some(tls) => match timeout(settings.connect_timeout, tls.connect(tcp, name)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(BackendError::unavailable(name, format!("TLS handshake with {addr}: {e}"))),
            Err(_) => return Err(BackendError::unavailable(name, format!("TLS handshake with {addr}: timed out"))),
        },
    };

    // HELLO both authenticates and fixes the protocol in one round trip.
    let proto = hs.proto.version().to_string();
    let mut hello: Vec<&[u8]> = vec![b"HELLO", proto.as_bytes()];
    if let Some(pass) = &settings.password {
        hello.push(b"AUTH");
        hello.push(settings.username.as_deref().unwrap_or("default").as_bytes());
        hello.push(pass.as_bytes());
    }
    let mut out = BytesMut::new();
    out.put(reply::command(&hello));
    let mut expected = 1;
    let db = hs.db.unwrap_or(settings.db);
    if db != 0 {
        out.put(reply::command(&[b"SELECT".as_slice(), db.to_string().as_bytes()]));
        expected += 1;
    }
    if let Some(n) = &hs.name {
        out.put(reply::command(&[b"CLIENT".as_slice(), b"SETNAME", n]));
        expected += 1;
    }
    if let Some(t) = &hs.tracking {
        out.put(t.clone());
        expected += 1;
    }

    let exchange = async {
        stream.write_all(&out).await?;
        let mut buf = BytesMut::with_capacity(1024);
        let mut frames = Vec::with_capacity(expected);
        while frames.len() < expected {
            match decode3(&buf) {
                Ok(Some((frame, len))) => {
                    let _ = buf.split_to(len);
                    frames.push(frame);
                    continue;
                }
                Ok(None) => {}
                Err(e) => return Err(std::io::Error::other(e.to_string())),
            }
            if stream.read_buf(&mut buf).await? == 0 {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed during handshake"));
            }
        }
        Ok(frames)
    };
    let frames = match timeout(settings.connect_timeout, exchange).await {
        Ok(Ok(f)) => f,
        Ok(Err(e)) => return Err(BackendError::unavailable(name, format!("handshake: {e}"))),
        Err(_) => return Err(BackendError::unavailable(name, "handshake timed out")),
    };
    let mut version = None;
    for frame in &frames {
        match frame {
            OwnedFrame::SimpleError { data, .. } => {
                return Err(BackendError::unavailable(name, format!("handshake refused: {data}")))
            }
            OwnedFrame::BlobError { data, .. } => {
                return Err(BackendError::unavailable(
                    name,
                    format!("handshake refused: {}", String::from_utf8_lossy(data)),
                ))
            }
            other => {
                if version.is_none() {
                    version = hello_version(other);
                }
            }
        }
    }
    Ok((stream, version))
}

/// Finds `version` in a HELLO reply (a map in RESP3, a flat key/value array in RESP2).
fn hello_version(frame: &OwnedFrame) -> Option<String> {
    let text = |f: &OwnedFrame| match f {
        OwnedFrame::BlobString { data, .. } => Some(String::from_utf8_lossy(data).into_owned()),
        OwnedFrame::SimpleString { data, .. } => Some(String::from_utf8_lossy(data).into_owned()),
        _ => None,
    };
    match frame {
        OwnedFrame::Map { data, .. } => {
            data.iter().find(|(k, _)| text(k).as_deref() == Some("version")).and_then(|(_, v)| text(v))
        }
        OwnedFrame::Array { data, .. } => data
            .chunks(2)
            .find(|kv| kv.first().and_then(text).as_deref() == Some("version"))
            .and_then(|kv| kv.get(1).and_then(text)),
        _ => None,
    }
}
