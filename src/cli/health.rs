//! `keyward health` and `keyward wait`: exec probes against a running keyward's admin
//! endpoint, for images without a shell or curl (distroless) and for kubelet probes, which
//! resolve `httpGet.host` on the node, not in the pod (cloud-sql-proxy's `wait` is the model).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Where the admin endpoint of the keyward started with `config` listens (an unspecified
/// address is reached on loopback); without a config, the default `127.0.0.1:9901`.
pub fn admin_addr(config: Option<&Path>) -> Result<SocketAddr, String> {
    let default = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9901);
    let Some(path) = config else {
        return Ok(default);
    };
    let config = crate::config::load(path).map_err(|p| p.to_string())?;
    let admin = config
        .admin
        .ok_or("the config has no admin endpoint (admin: null): nothing to probe")?;
    let mut addr = admin.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        });
    }
    Ok(addr)
}

/// One `GET path`: `Ok` on 200, else what was wrong.
pub async fn probe(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(), String> {
    let exchange = async {
        let mut tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot reach the admin endpoint at {addr}: {e}"))?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        tcp.write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut reply = Vec::new();
        tcp.read_to_end(&mut reply)
            .await
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&reply);
        let status = text.lines().next().unwrap_or_default().to_owned();
        if status.starts_with("HTTP/1.1 200") {
            Ok(())
        } else {
            let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().trim();
            Err(format!("{path}: {status} {body}"))
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or_else(|_| Err(format!("{path}: no answer from {addr} within {timeout:?}")))
}

/// Polls `/readyz` until it answers 200 (`Ok`) or `timeout` passes (the last reason).
pub async fn wait(addr: SocketAddr, timeout: Duration) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let last = match probe(addr, "/readyz", left.min(Duration::from_secs(2))).await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if tokio::time::Instant::now() + Duration::from_millis(200) >= deadline {
            return Err(format!("not ready within {timeout:?}: {last}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
