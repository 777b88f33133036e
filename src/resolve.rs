//! Upstream names to addresses, shared by every connection. The system resolver
//! (`getaddrinfo`) blocks, so each lookup takes a thread of tokio's blocking pool: looked up
//! per connection, a burst of connections to `db.internal` made a thread each (126 threads
//! for 2,000 connections). Here one lookup per name runs at a time, the others wait for it,
//! and its answer serves every connection for [`FRESH`] (Envoy refreshes a `STRICT_DNS`
//! cluster every 5 s by default). A failed lookup is not kept: the next connection asks
//! again. IP literals never reach the resolver.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::OnceCell;
use tokio::time::Instant;

/// How long a name's addresses are used before it is looked up again.
pub const FRESH: Duration = Duration::from_secs(5);

type Addrs = Arc<[SocketAddr]>;

/// One lookup of a name: waited on by every connection that needs it while it runs.
type Lookup = Arc<OnceCell<(Addrs, Instant)>>;

/// Names and their latest lookup.
#[derive(Debug, Default)]
pub struct Resolver {
    names: Mutex<HashMap<(String, u16), Lookup>>,
}

static SYSTEM: LazyLock<Resolver> = LazyLock::new(Resolver::default);

/// The addresses of `host:port` from the system resolver, shared as described above.
pub async fn resolve(host: &str, port: u16) -> io::Result<Addrs> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(Arc::from([SocketAddr::new(ip, port)]));
    }
    SYSTEM
        .resolve_with(host, port, |host, port| async move {
            tokio::net::lookup_host((host.as_str(), port))
                .await
                .map(Iterator::collect)
        })
        .await
}

impl Resolver {
    /// `host:port` through `lookup`, at most one at a time per name, its answer reused while
    /// fresh.
    pub async fn resolve_with<F, Fut>(&self, host: &str, port: u16, lookup: F) -> io::Result<Addrs>
    where
        F: Fn(String, u16) -> Fut,
        Fut: Future<Output = io::Result<Vec<SocketAddr>>>,
    {
        let key = (host.to_owned(), port);
        let cell = {
            let mut names = self.names.lock().unwrap_or_else(PoisonError::into_inner);
            let entry = names.entry(key).or_default();
            if entry.get().is_some_and(|(_, at)| at.elapsed() >= FRESH) {
                *entry = Lookup::default();
            }
            entry.clone()
        };
        let (addrs, _) = cell
            .get_or_try_init(|| async {
                let addrs = lookup(host.to_owned(), port).await?;
                Ok::<_, io::Error>((Addrs::from(addrs), Instant::now()))
            })
            .await?;
        Ok(addrs.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    type Answer = std::pin::Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send>>;

    fn counting(calls: &Arc<AtomicUsize>, fail: bool) -> impl Fn(String, u16) -> Answer {
        let calls = calls.clone();
        move |_host, port| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                if fail {
                    return Err(io::Error::other("no such host"));
                }
                Ok(vec![SocketAddr::from(([10, 0, 0, (n + 1) as u8], port))])
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_connections_makes_one_lookup_until_the_answer_is_stale() {
        let resolver = Arc::new(Resolver::default());
        let calls = Arc::new(AtomicUsize::new(0));
        let lookup = counting(&calls, false);
        let burst = (0..100).map(|_| resolver.resolve_with("db.internal", 5432, &lookup));
        let answers = futures_util::future::join_all(burst).await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        for a in &answers {
            assert_eq!(
                a.as_ref().unwrap()[..],
                [SocketAddr::from(([10, 0, 0, 1], 5432))]
            );
        }
        // Another port is another name.
        resolver
            .resolve_with("db.internal", 6432, &lookup)
            .await
            .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        // Fresh: reused; stale: looked up again, and the new answer used.
        tokio::time::advance(FRESH - Duration::from_millis(100)).await;
        resolver
            .resolve_with("db.internal", 5432, &lookup)
            .await
            .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        tokio::time::advance(Duration::from_millis(200)).await;
        let again = resolver
            .resolve_with("db.internal", 5432, &lookup)
            .await
            .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(again[..], [SocketAddr::from(([10, 0, 0, 3], 5432))]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_lookup_is_not_kept() {
        let resolver = Resolver::default();
        let calls = Arc::new(AtomicUsize::new(0));
        let failing = counting(&calls, true);
        assert!(resolver
            .resolve_with("gone.internal", 1, &failing)
            .await
            .is_err());
        assert!(resolver
            .resolve_with("gone.internal", 1, &failing)
            .await
            .is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        let working = counting(&calls, false);
        assert!(resolver
            .resolve_with("gone.internal", 1, &working)
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn ip_literals_and_localhost_resolve() {
        assert_eq!(
            resolve("127.0.0.1", 80).await.unwrap()[..],
            [SocketAddr::from(([127, 0, 0, 1], 80))]
        );
        assert_eq!(resolve("::1", 80).await.unwrap()[0].port(), 80);
        assert!(resolve("localhost", 80)
            .await
            .unwrap()
            .iter()
            .all(|a| a.ip().is_loopback()));
    }
}
