//! Reuse of logged-in server connections (`pool_max_idle` > 0), as PgBouncer's session mode
//! does: when an app ends its session with Terminate while the server is idle (ReadyForQuery
//! `I`), keyward resets the server session with `DISCARD ALL` and keeps the connection; the
//! next app connection with the same startup parameters gets it without a TCP connect, TLS
//! handshake, login or backend start. The pool belongs to the resource's runtime snapshot, so
//! a reload (new credentials, certificates) starts a fresh one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
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
    /// The worker thread that returned it (`crate::workers`), normally the one whose event
    /// loop reads it: taken by that worker's connections first, so its reads wake no other
    /// thread.
    worker: usize,
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
            worker: crate::workers::index(),
        }
    }
}

/// Idle server connections by startup packet.
///
/// Bounded in total (`max`) and per startup packet (`max` / 2, at least 1, so a burst of one
/// key cannot keep all the room); when full, the longest-idle connection of any key makes room
/// (one-off keys — another `application_name`, a JDBC `TimeZone` — age out instead of
/// starving everyone). Expired connections of every key are closed on each take and put and by
/// a sweep every quarter `idle_timeout` while any are pooled, so none outlives
/// `pool_idle_timeout` by more than a quarter of it.
pub struct Pool {
    max: usize,
    idle_timeout: Duration,
    idle: Arc<Mutex<HashMap<Vec<u8>, Vec<Idle>>>>,
    sweeping: Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("max", &self.max)
            .field("idle", &self.len())
            .finish()
    }
}

type Map = HashMap<Vec<u8>, Vec<Idle>>;

fn lock(idle: &Mutex<Map>) -> std::sync::MutexGuard<'_, Map> {
    match idle.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// Takes every expired connection out of `map` (and empty keys with them).
fn expired(map: &mut Map, idle_timeout: Duration) -> Vec<Idle> {
    let mut out = Vec::new();
    map.retain(|_, list| {
        let (keep, old): (Vec<Idle>, Vec<Idle>) = std::mem::take(list)
            .into_iter()
            .partition(|i| i.since.elapsed() < idle_timeout);
        *list = keep;
        out.extend(old);
        !list.is_empty()
    });
    out
}

/// Ends server sessions politely (Terminate, then close), off the caller's path.
fn close(idle: Vec<Idle>) {
    if idle.is_empty() {
        return;
    }
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return; // dropped: the sockets close
    };
    handle.spawn(async move {
        use tokio::io::AsyncWriteExt;
        for mut i in idle {
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                let _ = i.up.io.write_all(&[b'X', 0, 0, 0, 4]).await;
                let _ = i.up.io.shutdown().await;
            })
            .await;
        }
    });
}

impl Pool {
    /// A pool keeping up to `max` connections for `idle_timeout`; `max == 0` keeps none.
    pub fn new(max: usize, idle_timeout: Duration) -> Self {
        Self {
            max,
            idle_timeout,
            idle: Arc::new(Mutex::new(HashMap::new())),
            sweeping: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        }
    }

    /// Whether connections are kept at all.
    pub fn enabled(&self) -> bool {
        self.max > 0
    }

    fn map(&self) -> std::sync::MutexGuard<'_, Map> {
        lock(&self.idle)
    }

    /// The most connections one startup packet may keep.
    fn per_key(&self) -> usize {
        (self.max / 2).max(1)
    }

    /// How many connections are idle now.
    pub fn len(&self) -> usize {
        self.map().values().map(Vec::len).sum()
    }

    /// Whether none is idle.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most recently returned connection for `startup`, this worker's if it has one;
    /// expired ones of every key are closed. (A pooled connection is logged in: taking one is
    /// using the credential.)
    pub fn take(&self, startup: &[u8], _admitted: &crate::connect::Admitted) -> Option<Idle> {
        let mut map = self.map();
        let old = expired(&mut map, self.idle_timeout);
        let here = crate::workers::index();
        let found = map.get_mut(startup).and_then(|list| {
            let newest = list.len().checked_sub(1)?;
            let i = list
                .iter()
                .rposition(|i| i.worker == here)
                .unwrap_or(newest);
            Some(list.remove(i))
        });
        if map.get(startup).is_some_and(Vec::is_empty) {
            map.remove(startup);
        }
        drop(map);
        close(old);
        found
    }

    /// Keeps `idle`: expired connections go first, then, if its key is at its bound, that
    /// key's oldest, or if the pool is full, the oldest of any key.
    pub fn put(&self, startup: Vec<u8>, idle: Idle) {
        if self.max == 0 {
            return;
        }
        let mut map = self.map();
        let mut old = expired(&mut map, self.idle_timeout);
        let per_key = self.per_key();
        if let Some(list) = map.get_mut(&startup) {
            if list.len() >= per_key {
                old.push(list.remove(0));
            }
        }
        let total: usize = map.values().map(Vec::len).sum();
        if total >= self.max {
            let oldest = map
                .iter()
                .filter_map(|(k, list)| list.first().map(|i| (k.clone(), i.since)))
                .min_by_key(|(_, since)| *since)
                .map(|(k, _)| k);
            if let Some(k) = oldest {
                if let Some(list) = map.get_mut(&k) {
                    old.push(list.remove(0));
                    if list.is_empty() {
                        map.remove(&k);
                    }
                }
            }
        }
        map.entry(startup).or_default().push(idle);
        drop(map);
        close(old);
        self.sweep_while_pooled();
    }

    /// Starts the periodic sweep if it is not running: every quarter `idle_timeout` it
    /// closes expired connections, and ends once the pool is empty (or dropped).
    fn sweep_while_pooled(&self) {
        use std::sync::atomic::Ordering;
        if self.sweeping.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            self.sweeping.store(false, Ordering::Release);
            return;
        };
        let idle = Arc::downgrade(&self.idle);
        let sweeping = self.sweeping.clone();
        let timeout = self.idle_timeout;
        let tick = (timeout / 4).max(Duration::from_millis(10));
        handle.spawn(async move {
            loop {
                tokio::time::sleep(tick).await;
                let Some(idle) = idle.upgrade() else { break };
                let (old, empty) = {
                    let mut map = lock(&idle);
                    let old = expired(&mut map, timeout);
                    (old, map.is_empty())
                };
                close(old);
                if empty {
                    sweeping.store(false, Ordering::Release);
                    // A put between the check and the store found the flag still set and
                    // left the sweeping to this task: go on if so.
                    let refilled = !lock(&idle).is_empty();
                    if !refilled || sweeping.swap(true, Ordering::AcqRel) {
                        break;
                    }
                }
            }
        });
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
    /// Messages that each get exactly one ReadyForQuery: in the app's direction, simple
    /// queries (`Q`), Syncs (`S`) and function calls (`F`) sent; in the server's,
    /// ReadyForQuery messages (`Z`) received (PostgreSQL protocol, "Message Flow").
    pub cycles: u64,
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

    /// Whether the server (`self`) has answered every query and Sync the app (`app`) sent and
    /// is idle outside a transaction: only then may its connection serve another app. A
    /// pipelining app can end its session while the server still works on what it sent.
    pub fn settled(&self, app: &Frames) -> bool {
        self.idle() && app.at_boundary() && self.cycles == app.cycles
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
                let counted: &[u8] = if self.stop_on_terminate { b"QSF" } else { b"Z" };
                if counted.contains(&self.tag) {
                    self.cycles += 1;
                }
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

    /// Found by the `postgres` fuzz target (its split-versus-whole property was too strict): a
    /// Terminate whose header straddles two reads has had its first bytes passed on, so it is
    /// followed like any message and a later Terminate stops the relay instead. (The server
    /// got the first one and closes: the reset then fails and the connection is not pooled.)
    #[test]
    fn a_terminate_split_across_reads_is_passed_on_and_a_later_one_stops() {
        let stream = [&b"X\0\0\0\x04"[..], b"X\0\0\0\x04"].concat();
        assert_eq!(Frames::app().feed(&stream), Some(0));
        let mut f = Frames::app();
        assert_eq!(f.feed(&stream[..2]), None);
        assert_eq!(f.feed(&stream[2..]).map(|at| 2 + at), Some(5));
    }

    async fn idle_pair() -> (Idle, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let up = Wire::new(
            tokio_util::either::Either::Left(client),
            crate::error::Side::Upstream,
        );
        (Idle::new(up, Vec::new(), 1, vec![0; 4]), server)
    }

    #[test]
    fn a_session_is_settled_only_when_every_query_was_answered() {
        let msg = |tag: u8, body: &[u8]| {
            let mut m = vec![tag];
            m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
            m.extend_from_slice(body);
            m
        };
        let (mut app, mut server) = (Frames::app(), Frames::server());
        // Two simple queries pipelined, then Sync of an extended-protocol batch.
        app.feed(&[msg(b'Q', b"SELECT 1\0"), msg(b'Q', b"SELECT 2\0")].concat());
        app.feed(&[msg(b'P', b"\0SELECT 3\0\0\0"), msg(b'S', b"")].concat());
        let answer = |s: &mut Frames| {
            s.feed(&[msg(b'C', b"SELECT 1\0"), msg(b'Z', b"I")].concat());
        };
        answer(&mut server);
        assert!(server.idle(), "idle after the first answer");
        assert!(!server.settled(&app), "but two answers are outstanding");
        answer(&mut server);
        assert!(!server.settled(&app));
        answer(&mut server);
        assert!(server.settled(&app));
    }

    #[tokio::test]
    async fn one_off_keys_cannot_starve_the_pool() {
        let pool = Pool::new(4, Duration::from_secs(60));
        let admitted = crate::connect::Admitted::grant();
        let mut peers = Vec::new();
        // Four one-off keys fill the pool...
        for k in 0..4u8 {
            let (idle, peer) = idle_pair().await;
            peers.push(peer);
            pool.put(vec![k], idle);
        }
        assert_eq!(pool.len(), 4);
        // ...yet the common key still gets its connections kept: the oldest make room.
        for _ in 0..3 {
            let (idle, peer) = idle_pair().await;
            peers.push(peer);
            pool.put(b"app".to_vec(), idle);
        }
        assert_eq!(pool.len(), 4, "bounded in total");
        assert!(pool.take(b"app", &admitted).is_some());
        assert!(pool.take(b"app", &admitted).is_some());
        assert!(
            pool.take(b"app", &admitted).is_none(),
            "bounded per key (max / 2)"
        );
    }

    #[tokio::test]
    async fn expired_connections_of_any_key_are_terminated() {
        use tokio::io::AsyncReadExt;
        let pool = Pool::new(4, Duration::from_millis(100));
        let (idle, mut peer) = idle_pair().await;
        pool.put(b"one-off".to_vec(), idle);
        // Nobody asks for "one-off" again: the sweep ends it on the server.
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), peer.read_to_end(&mut got))
            .await
            .expect("the expired connection was not closed")
            .unwrap();
        assert_eq!(got, vec![b'X', 0, 0, 0, 4], "Terminate, then close");
        assert!(pool.is_empty());
    }
}
