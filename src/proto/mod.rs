//! The wire: RESP framing of client requests and backend replies, replies the proxy writes
//! itself, and the command table that says what each command is.
//!
//! Client bytes are never re-encoded on the way to a backend: a parsed [`request::Request`]
//! keeps the exact bytes it was read from plus the offsets of its arguments, so routing can
//! look at the command name and keys while forwarding stays a copy of a `Bytes` slice.

pub mod commands;
pub mod reply;
pub mod request;
pub mod value;
