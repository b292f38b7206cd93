//! A tiny synchronous RESP client for byte-exact assertions.
//!
//! The `redis` crate parses replies into values, which hides exactly what a
//! proxy must get right: the bytes on the wire (framing, RESP3 types, error
//! texts, behaviour on malformed input). [`RawConn`] sends arbitrary bytes and
//! returns replies as the raw bytes of one complete frame.

use std::fmt::Debug;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use super::IO_TIMEOUT;

/// Encodes a command as a RESP array of bulk strings
/// (`*N\r\n$len\r\narg\r\n...`), the form every client sends.
pub fn encode_cmd<A: AsRef<[u8]>>(args: &[A]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        let arg = arg.as_ref();
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Length of the complete RESP2/RESP3 frame at the start of `buf`.
///
/// * `Ok(Some(n))`: `buf[..n]` is exactly one complete frame;
/// * `Ok(None)`: the frame is incomplete, read more;
/// * `Err(msg)`: `buf` does not start with valid RESP.
///
/// Handles simple types (`+ - : , # _ (`), length-prefixed blobs (`$ ! =`,
/// including `$-1` nulls) and aggregates (`* ~ >` with N elements, `%`
/// with N pairs, `*-1` nulls). An attribute (`|`, N pairs) is not a reply on
/// its own: the frame returned is the attribute *plus* the value it
/// annotates. Streamed RESP3 strings/aggregates (`$?`, `*?`) are not
/// supported (Redis never sends them).
pub fn resp_frame_len(buf: &[u8]) -> Result<Option<usize>, String> {
    frame_end(buf, 0, 0)
}

fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?.windows(2).position(|w| w == b"\r\n").map(|i| from + i)
}

fn parse_len(header: &[u8], pos: usize) -> Result<i64, String> {
    std::str::from_utf8(header)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(|| format!("invalid length {:?} at byte {pos}", String::from_utf8_lossy(header)))
}

fn frame_end(buf: &[u8], pos: usize, depth: usize) -> Result<Option<usize>, String> {
    if depth > 128 {
        return Err("RESP nesting deeper than 128 levels".into());
    }
    let Some(&kind) = buf.get(pos) else {
        return Ok(None);
    };
    if !b"+-:,#_($!=*~>%|".contains(&kind) {
        return Err(format!("invalid RESP type byte {:?} (0x{kind:02x}) at byte {pos}", kind as char));
    }
    let Some(cr) = find_crlf(buf, pos + 1) else {
        return Ok(None);
    };
    let header = &buf[pos + 1..cr];
    let body = cr + 2;
    match kind {
        b'+' | b'-' | b':' | b',' | b'#' | b'_' | b'(' => Ok(Some(body)),
        b'$' | b'!' | b'=' => {
            if header == b"?" {
                return Err(format!("streamed RESP3 string at byte {pos} is not supported"));
            }
            let len = parse_len(header, pos)?;
            if len < 0 {
                // `$-1\r\n`: RESP2 null bulk string.
                return Ok(Some(body));
            }
            let end = body + len as usize;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(format!("blob of length {len} at byte {pos} is not terminated by CRLF"));
            }
            Ok(Some(end + 2))
        }
        b'*' | b'~' | b'>' | b'%' | b'|' => {
            if header == b"?" {
                return Err(format!("streamed RESP3 aggregate at byte {pos} is not supported"));
            }
            let count = parse_len(header, pos)?;
            if count < 0 {
                // `*-1\r\n`: RESP2 null array.
                return Ok(Some(body));
            }
            let elements = if kind == b'%' || kind == b'|' { count as usize * 2 } else { count as usize };
            let mut p = body;
            for _ in 0..elements {
                match frame_end(buf, p, depth + 1)? {
                    Some(e) => p = e,
                    None => return Ok(None),
                }
            }
            if kind == b'|' {
                // The attribute annotates the frame that follows it.
                return frame_end(buf, p, depth + 1);
            }
            Ok(Some(p))
        }
        _ => unreachable!(),
    }
}

/// A synchronous raw RESP connection with a per-operation deadline.
///
/// All methods are bounded by the connection timeout (default 5 s, see
/// [`set_timeout`](Self::set_timeout)); the panicking variants include the
/// bytes received so far in their message.
pub struct RawConn {
    stream: TcpStream,
    /// Bytes received but not yet returned as a frame.
    buf: Vec<u8>,
    timeout: Duration,
    peer: String,
}

impl RawConn {
    /// Connects to `addr` (e.g. `"127.0.0.1:6379"` or `server.addr()`),
    /// panicking if that fails within 5 s.
    #[track_caller]
    pub fn connect<A: ToSocketAddrs + Debug>(addr: A) -> RawConn {
        match Self::try_connect(&addr, IO_TIMEOUT) {
            Ok(c) => c,
            Err(e) => panic!("RawConn: cannot connect to {addr:?}: {e}"),
        }
    }

    /// Fallible connect with an explicit connect/IO timeout.
    pub fn try_connect<A: ToSocketAddrs + Debug>(addr: A, timeout: Duration) -> io::Result<RawConn> {
        let mut last_err = io::Error::new(io::ErrorKind::NotFound, format!("{addr:?} resolved to nothing"));
        for sock in addr.to_socket_addrs()? {
            match TcpStream::connect_timeout(&sock, timeout) {
                Ok(stream) => {
                    stream.set_nodelay(true)?;
                    stream.set_write_timeout(Some(timeout))?;
                    return Ok(RawConn { stream, buf: Vec::new(), timeout, peer: sock.to_string() });
                }
                Err(e) => last_err = e,
            }
        }
        Err(last_err)
    }

    /// Changes the bound applied to each subsequent read/write operation.
    pub fn set_timeout(&mut self, timeout: Duration) {
        assert!(!timeout.is_zero(), "RawConn timeout must be non-zero");
        self.timeout = timeout;
        self.stream.set_write_timeout(Some(timeout)).expect("set_write_timeout");
    }

    /// The underlying socket (e.g. to inspect `local_addr`).
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Writes `bytes` verbatim (may be partial commands, garbage, pipelines).
    #[track_caller]
    pub fn send(&mut self, bytes: &[u8]) {
        if let Err(e) = self.try_send(bytes) {
            panic!("RawConn({}): write of {} bytes failed: {e}", self.peer, bytes.len());
        }
    }

    /// Fallible [`send`](Self::send), for tests where the peer may have gone.
    pub fn try_send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// Sends `args` encoded as a RESP array of bulk strings.
    #[track_caller]
    pub fn send_cmd(&mut self, args: &[&str]) {
        self.send(&encode_cmd(args));
    }

    /// [`send_cmd`](Self::send_cmd) then [`read_reply`](Self::read_reply).
    #[track_caller]
    pub fn request(&mut self, args: &[&str]) -> Vec<u8> {
        self.send_cmd(args);
        self.read_reply()
    }

    /// Half-closes the connection (sends FIN) while still allowing reads.
    pub fn shutdown_write(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }

    /// Reads more bytes into `self.buf`, bounded by `deadline`.
    /// Returns the number of bytes read (0 = peer closed).
    fn fill(&mut self, deadline: Instant) -> io::Result<usize> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "deadline exceeded"));
        }
        self.stream.set_read_timeout(Some(remaining))?;
        let mut chunk = [0u8; 16 * 1024];
        match super::read_some(&mut self.stream, &mut chunk) {
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(n)
            }
            // std reports a read timeout as WouldBlock on Unix.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                Err(io::Error::new(io::ErrorKind::TimedOut, "read timed out"))
            }
            Err(e) => Err(e),
        }
    }

    /// Reads exactly one complete RESP2/RESP3 reply frame and returns its raw
    /// bytes; bytes after it stay buffered for the next call. Panics on
    /// timeout, EOF or malformed data, showing what was received.
    #[track_caller]
    pub fn read_reply(&mut self) -> Vec<u8> {
        match self.try_read_reply() {
            Ok(frame) => frame,
            Err(e) => panic!(
                "RawConn({}): read_reply failed: {e}; buffered so far: {:?}",
                self.peer,
                String::from_utf8_lossy(&self.buf)
            ),
        }
    }

    /// Fallible [`read_reply`](Self::read_reply): `TimedOut`, `UnexpectedEof`
    /// (peer closed before a full frame), `InvalidData` (not RESP), or the
    /// socket error (e.g. `ConnectionReset`). Partial data stays buffered.
    pub fn try_read_reply(&mut self) -> io::Result<Vec<u8>> {
        let deadline = Instant::now() + self.timeout;
        loop {
            match resp_frame_len(&self.buf) {
                Ok(Some(n)) => return Ok(self.buf.drain(..n).collect()),
                Ok(None) => {}
                Err(msg) => return Err(io::Error::new(io::ErrorKind::InvalidData, msg)),
            }
            if self.fill(deadline)? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("connection closed by peer with {} bytes of an incomplete frame", self.buf.len()),
                ));
            }
        }
    }

    /// Returns every remaining byte (buffered + received) until the peer
    /// closes the connection. A reset counts as closed. Panics if the peer
    /// does not close within the timeout.
    #[track_caller]
    pub fn read_until_closed(&mut self) -> Vec<u8> {
        let deadline = Instant::now() + self.timeout;
        loop {
            match self.fill(deadline) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!(
                    "RawConn({}): peer did not close the connection: {e}; received: {:?}",
                    self.peer,
                    String::from_utf8_lossy(&self.buf)
                ),
            }
        }
        std::mem::take(&mut self.buf)
    }

    /// Bytes received but not yet consumed by `read_reply`.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }
}
