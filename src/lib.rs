//! tandem: a RESP proxy that sits beside an application while its Redis data moves
//! from one store to another.
//!
//! A command travels through the modules in this order:
//! [`client`] (accepted connection, per-connection state) → [`proto`] (framing and the
//! command table) → [`route`] (which backend serves it) → [`backend`] (pooled or dedicated
//! backend connections) → back to [`client`] as a reply written in order.

pub mod admin;
pub mod backend;
pub mod client;
pub mod compare;
pub mod config;
pub mod control;
pub mod ctl;
pub mod fuzzing;
pub mod metrics;
pub mod migrate;
pub mod mirror;
pub mod proto;
pub mod route;
pub mod server;

/// Wall-clock time in milliseconds since the Unix epoch (0 if the clock is before it): the
/// timestamps in journals and logs, and the "now" that relative TTLs become absolute against.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
