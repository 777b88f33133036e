//! Reuse of logged-in server connections (`pool_max_idle` > 0), as PgBouncer's session mode
//! does: when an app ends its session with Terminate while the server is idle (ReadyForQuery
//! `I`), keyward resets the server session with `DISCARD ALL` and keeps the connection; the
//! next app connection with the same startup parameters gets it without a TCP connect, TLS
//! handshake, login or backend start. The pool belongs to the resource's runtime snapshot, so
//! a reload (new credentials, certificates) starts a fresh one.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::connect::UpstreamStream;
use crate::relay::Watch;
use crate::wire::Wire;

/// A logged-in server connection waiting for an app.
pub struct Idle {
    /// The connection (its read buffer empty).
    pub up: Wire<UpstreamStream>,
    /// The ParameterStatus messages of its login, as sent.
    pub params: Vec<u8>,
    /// Its backend key.
    pub pid: i32,
    /// Its backend secret.
    pub key: Vec<u8>,
    since: Instant,
}

impl Idle {
    /// A connection just reset.
    pub fn new(up: Wire<UpstreamStream>, params: Vec<u8>, pid: i32, key: Vec<u8>) -> Self {
        Self {
            up,
            params,
            pid,
            key,
            since: Instant::now(),
        }
    }
}

/// Idle server connections by startup packet.
pub struct Pool {
    max: usize,
    idle_timeout: Duration,
    idle: Mutex<HashMap<Vec<u8>, Vec<Idle>>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("max", &self.max)
            .field("idle", &self.len())
            .finish()
    }
}

impl Pool {
    /// A pool keeping up to `max` connections for `idle_timeout`; `max == 0` keeps none.
    pub fn new(max: usize, idle_timeout: Duration) -> Self {
        Self {
            max,
            idle_timeout,
            idle: Mutex::new(HashMap::new()),
        }
    }

    /// Whether connections are kept at all.
    pub fn enabled(&self) -> bool {
        self.max > 0
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, Vec<Idle>>> {
        match self.idle.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// How many connections are idle now.
    pub fn len(&self) -> usize {
        self.map().values().map(Vec::len).sum()
    }

    /// Whether none is idle.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most recently returned connection for `startup`, dropping expired ones.
    /// (A pooled connection is logged in: taking one is using the credential.)
    pub fn take(&self, startup: &[u8], _admitted: &crate::connect::Admitted) -> Option<Idle> {
        let mut map = self.map();
        let list = map.get_mut(startup)?;
        list.retain(|i| i.since.elapsed() < self.idle_timeout);
        list.pop()
    }

    /// Keeps `idle` if there is room.
    pub fn put(&self, startup: Vec<u8>, idle: Idle) {
        let mut map = self.map();
        let total: usize = map.values().map(Vec::len).sum();
        if total < self.max {
            map.entry(startup).or_default().push(idle);
        }
    }
}

/// Where a stream of tagged PostgreSQL messages is, for deciding whether a session ended
/// cleanly: a [`Watch`] on one direction of the relay. Sans I/O; it never copies.
#[derive(Debug, Default)]
pub struct Frames {
    header: [u8; 5],
    have: usize,
    left: usize,
    tag: u8,
    /// The next body byte is a ReadyForQuery's status.
    want_status: bool,
    /// Whether a Terminate (`X`) ends the relay (the app's direction).
    stop_on_terminate: bool,
    /// The tag of the last complete message.
    pub last: u8,
    /// The status byte of the last ReadyForQuery.
    pub status: u8,
}

impl Frames {
    /// The app's messages: a Terminate whose header arrives whole ends the relay before it.
    pub fn app() -> Self {
        Self {
            stop_on_terminate: true,
            ..Self::default()
        }
    }

    /// The server's messages: only watched.
    pub fn server() -> Self {
        Self::default()
    }

    /// Whether the stream is between messages.
    pub fn at_boundary(&self) -> bool {
        self.have == 0 && self.left == 0
    }

    /// Whether the server is idle outside a transaction (last message ReadyForQuery `I`).
    pub fn idle(&self) -> bool {
        self.at_boundary() && self.last == b'Z' && self.status == b'I'
    }

    /// Follows `input`. Returns the offset of a Terminate message (`X`) whose 5-byte header
    /// starts and ends in `input`, if this is the app's direction; nothing from there on is to
    /// be passed on. A Terminate split across reads (its first bytes already passed on) is
    /// followed like any message: the server then closes, and the connection is not reused.
    pub fn feed(&mut self, input: &[u8]) -> Option<usize> {
        let mut i = 0;
        while i < input.len() {
            if self.left == 0 {
                let (start, whole) = (i, self.have == 0);
                let take = (5 - self.have).min(input.len() - i);
                self.header[self.have..self.have + take].copy_from_slice(&input[i..i + take]);
                self.have += take;
                i += take;
                if self.have < 5 {
                    break;
                }
                self.have = 0;
                let h = self.header;
                self.tag = h[0];
                self.left =
                    (u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize).saturating_sub(4);
                if self.tag == b'X' && whole && self.stop_on_terminate {
                    return Some(start);
                }
                self.want_status = self.tag == b'Z' && self.left > 0;
                if self.left == 0 {
                    self.last = self.tag;
                }
                continue;
            }
            let take = self.left.min(input.len() - i);
            if std::mem::take(&mut self.want_status) {
                self.status = input[i];
            }
            self.left -= take;
            i += take;
            if self.left == 0 {
                self.last = self.tag;
            }
        }
        None
    }
}

impl Watch for Frames {
    fn inspect(&mut self, data: &[u8]) -> Option<usize> {
        self.feed(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_track_idle_and_stop_at_terminate_in_any_split() {
        let server = [
            &b"C\0\0\0\x0dSELECT 1\0"[..],
            &b"Z\0\0\0\x05T"[..],
            &b"Z\0\0\0\x05I"[..],
        ]
        .concat();
        for cut in 0..server.len() {
            let mut f = Frames::server();
            assert_eq!(f.feed(&server[..cut]), None);
            assert_eq!(f.feed(&server[cut..]), None);
            assert!(f.idle(), "split at {cut}");
        }
        let query = b"Q\0\0\0\x0dSELECT 1\0";
        let client = [&query[..], &b"X\0\0\0\x04"[..]].concat();
        for cut in 0..client.len() {
            let mut f = Frames::app();
            let stop = match f.feed(&client[..cut]) {
                Some(at) => Some(at),
                None => f.feed(&client[cut..]).map(|at| cut + at),
            };
            if cut <= query.len() {
                // The Terminate header arrives whole: the relay stops right before it.
                assert_eq!(stop, Some(query.len()), "split at {cut}");
            } else {
                // Split Terminate: passed on like any message.
                assert_eq!(stop, None, "split at {cut}");
                assert!(f.at_boundary());
            }
        }
        let mut f = Frames::server();
        f.feed(b"Z\0\0\0\x05T");
        assert!(!f.idle(), "in a transaction");
        let mut f = Frames::server();
        f.feed(b"Z\0\0\0\x05I");
        f.feed(b"D\0\0");
        assert!(!f.idle(), "inside a message");
        // The status is the first body byte however the body is split.
        let mut f = Frames::server();
        f.feed(b"Z\0\0\0\x07I");
        f.feed(b"TT");
        assert_eq!(f.status, b'I');
    }
}
