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
    pub fn take(&self, startup: &[u8]) -> Option<Idle> {
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
/// cleanly. Sans I/O.
#[derive(Debug, Default)]
pub struct Frames {
    header: Vec<u8>,
    left: usize,
    tag: u8,
    /// The tag of the last complete message.
    pub last: u8,
    /// The status byte of the last ReadyForQuery.
    pub status: u8,
}

impl Frames {
    /// Whether the stream is between messages.
    pub fn at_boundary(&self) -> bool {
        self.header.is_empty() && self.left == 0
    }

    /// Whether the server is idle outside a transaction (last message ReadyForQuery `I`).
    pub fn idle(&self) -> bool {
        self.at_boundary() && self.last == b'Z' && self.status == b'I'
    }

    /// Feeds bytes; appends those to pass on to `out`, leaving out a Terminate (`X`), which
    /// makes it return true (nothing after it is passed on).
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> bool {
        while !input.is_empty() {
            if self.left == 0 {
                let take = (5 - self.header.len()).min(input.len());
                self.header.extend_from_slice(&input[..take]);
                input = &input[take..];
                if self.header.len() < 5 {
                    continue;
                }
                let h = std::mem::take(&mut self.header);
                self.tag = h[0];
                let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize;
                self.left = len.saturating_sub(4);
                if self.tag == b'X' {
                    return true;
                }
                out.extend_from_slice(&h);
                if self.left == 0 {
                    self.last = self.tag;
                }
                continue;
            }
            let take = self.left.min(input.len());
            if self.tag == b'Z' && take > 0 {
                self.status = input[0];
            }
            out.extend_from_slice(&input[..take]);
            self.left -= take;
            input = &input[take..];
            if self.left == 0 {
                self.last = self.tag;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_track_idle_and_drop_terminate_in_any_split() {
        let server = [
            &b"C\0\0\0\x0dSELECT 1\0"[..],
            &b"Z\0\0\0\x05T"[..],
            &b"Z\0\0\0\x05I"[..],
        ]
        .concat();
        for cut in 0..server.len() {
            let mut f = Frames::default();
            let mut out = Vec::new();
            assert!(!f.feed(&server[..cut], &mut out));
            assert!(!f.feed(&server[cut..], &mut out));
            assert_eq!(out, server);
            assert!(f.idle(), "split at {cut}");
        }
        let client = [&b"Q\0\0\0\x0dSELECT 1\0"[..], &b"X\0\0\0\x04"[..]].concat();
        for cut in 0..client.len() {
            let mut f = Frames::default();
            let mut out = Vec::new();
            let t = f.feed(&client[..cut], &mut out) || f.feed(&client[cut..], &mut out);
            assert!(t, "split at {cut}");
            assert_eq!(out, b"Q\0\0\0\x0dSELECT 1\0");
        }
        let mut f = Frames::default();
        f.feed(b"Z\0\0\0\x05T", &mut Vec::new());
        assert!(!f.idle(), "in a transaction");
    }
}
