//! An in-process server for MySQL 8's `caching_sha2_password`, written from the MySQL
//! documentation ("Caching SHA-2 Pluggable Authentication", "Protocol::HandshakeV10",
//! "Protocol::AuthMoreData"), because no MySQL 8 server exists here. It speaks just enough
//! protocol to log a client in and answer COM_PING / COM_QUIT:
//!
//! - scramble: the client sends XOR(SHA256(pw), SHA256(SHA256(SHA256(pw)) || nonce)); the
//!   server keeps SHA256(SHA256(pw)) and checks it.
//! - fast path: a user that logged in before (the cache) gets AuthMoreData 0x03, then OK.
//! - full path: AuthMoreData 0x04; over TLS the client sends the password + NUL; without TLS
//!   it asks for the RSA public key (0x02), gets it as AuthMoreData, and sends
//!   RSA-OAEP(SHA-1)(password + NUL XOR scramble).
//!
//! Its faithfulness is checked by logging into it with the real `mariadb-admin` (libmariadb's
//! caching_sha2_password client plugin).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use rsa::pkcs8::{EncodePublicKey, LineEnding};
use rsa::{Oaep, RsaPrivateKey};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

/// Which path a login took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Path {
    Fast,
    FullTls,
    FullRsa,
    Denied,
}

pub struct Mysql8 {
    pub port: u16,
    pub logins: Arc<Mutex<Vec<Path>>>,
    _task: tokio::task::JoinHandle<()>,
}

struct Shared {
    user: Vec<u8>,
    stored: [u8; 32],
    cache: Mutex<HashSet<Vec<u8>>>,
    key: RsaPrivateKey,
    pem: String,
    tls: Option<tokio_rustls::TlsAcceptor>,
    logins: Arc<Mutex<Vec<Path>>>,
}

fn sha(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

impl Mysql8 {
    /// A server for one user; TLS offered when `tls` is given.
    pub async fn start(user: &str, password: &str, tls: Option<rustls::ServerConfig>) -> Self {
        let key = tokio::task::spawn_blocking(|| {
            RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap()
        })
        .await
        .unwrap();
        let pem = key
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        let logins = Arc::new(Mutex::new(Vec::new()));
        let shared = Arc::new(Shared {
            user: user.as_bytes().to_vec(),
            stored: sha(&sha(password.as_bytes())),
            cache: Mutex::new(HashSet::new()),
            key,
            pem,
            tls: tls.map(|c| tokio_rustls::TlsAcceptor::from(Arc::new(c))),
            logins: logins.clone(),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                // Each reply is its own write: without NODELAY, Nagle holds the second
                // back until the client's delayed ACK (40 ms).
                let _ = tcp.set_nodelay(true);
                let shared = shared.clone();
                tokio::spawn(async move {
                    let _ = session(tcp, shared).await;
                });
            }
        });
        Self {
            port,
            logins,
            _task: task,
        }
    }
}

async fn read_packet<S: AsyncRead + Unpin>(s: &mut S) -> std::io::Result<(u8, Vec<u8>)> {
    let mut h = [0u8; 4];
    s.read_exact(&mut h).await?;
    let len = u32::from_le_bytes([h[0], h[1], h[2], 0]) as usize;
    let mut p = vec![0; len];
    s.read_exact(&mut p).await?;
    Ok((h[3], p))
}

async fn write_packet<S: AsyncWrite + Unpin>(s: &mut S, seq: u8, p: &[u8]) -> std::io::Result<()> {
    let mut f = (p.len() as u32).to_le_bytes()[..3].to_vec();
    f.push(seq);
    f.extend_from_slice(p);
    s.write_all(&f).await?;
    s.flush().await
}

const CLIENT_SSL: u32 = 0x0800;
const CLIENT_PLUGIN_AUTH_LENENC: u32 = 0x0020_0000;
const CLIENT_CONNECT_WITH_DB: u32 = 0x0008;

async fn session(mut tcp: tokio::net::TcpStream, shared: Arc<Shared>) -> std::io::Result<()> {
    let mut scramble = [0u8; 20];
    for b in &mut scramble {
        *b = fastrand::u8(33..127);
    }
    // HandshakeV10.
    let mut caps: u32 = 0x0000_0001 // LONG_PASSWORD
        | 0x0000_0004 // LONG_FLAG
        | CLIENT_CONNECT_WITH_DB
        | 0x0000_0200 // PROTOCOL_41
        | 0x0000_2000 // TRANSACTIONS
        | 0x0000_8000 // SECURE_CONNECTION
        | 0x0008_0000 // PLUGIN_AUTH
        | 0x0010_0000 // CONNECT_ATTRS
        | CLIENT_PLUGIN_AUTH_LENENC;
    if shared.tls.is_some() {
        caps |= CLIENT_SSL;
    }
    let mut g = vec![10u8];
    g.extend_from_slice(b"8.0.36-keyward-test\0");
    g.extend_from_slice(&7u32.to_le_bytes());
    g.extend_from_slice(&scramble[..8]);
    g.push(0);
    g.extend_from_slice(&(caps as u16).to_le_bytes());
    g.push(255); // utf8mb4_0900_ai_ci
    g.extend_from_slice(&2u16.to_le_bytes());
    g.extend_from_slice(&((caps >> 16) as u16).to_le_bytes());
    g.push(21);
    g.extend_from_slice(&[0; 10]);
    g.extend_from_slice(&scramble[8..]);
    g.push(0);
    g.extend_from_slice(b"caching_sha2_password\0");
    write_packet(&mut tcp, 0, &g).await?;
    let (seq, first) = read_packet(&mut tcp).await?;
    let client_caps = u32::from_le_bytes(first[..4].try_into().unwrap());
    if client_caps & CLIENT_SSL != 0 && first.len() == 32 {
        let Some(acceptor) = shared.tls.clone() else {
            return Ok(());
        };
        let mut tls = acceptor.accept(tcp).await?;
        let (seq, response) = read_packet(&mut tls).await?;
        return login(&mut tls, seq, &response, &scramble, true, &shared).await;
    }
    login(&mut tcp, seq, &first, &scramble, false, &shared).await
}

/// HandshakeResponse41 → user, auth response, plugin name.
fn parse_response(p: &[u8]) -> Option<(Vec<u8>, Vec<u8>, Vec<u8>)> {
    let caps = u32::from_le_bytes(p.get(..4)?.try_into().ok()?);
    let mut rest = p.get(32..)?;
    let nul = rest.iter().position(|&b| b == 0)?;
    let user = rest[..nul].to_vec();
    rest = &rest[nul + 1..];
    let auth = if caps & CLIENT_PLUGIN_AUTH_LENENC != 0 {
        let len = *rest.first()? as usize; // short responses only (< 251 bytes)
        let a = rest.get(1..1 + len)?.to_vec();
        rest = &rest[1 + len..];
        a
    } else {
        let len = *rest.first()? as usize;
        let a = rest.get(1..1 + len)?.to_vec();
        rest = &rest[1 + len..];
        a
    };
    if caps & CLIENT_CONNECT_WITH_DB != 0 {
        let nul = rest.iter().position(|&b| b == 0)?;
        rest = &rest[nul + 1..];
    }
    let nul = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    Some((user, auth, rest[..nul].to_vec()))
}

async fn login<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    mut seq: u8,
    response: &[u8],
    scramble: &[u8; 20],
    tls: bool,
    shared: &Shared,
) -> std::io::Result<()> {
    let record = |p: Path| shared.logins.lock().unwrap().push(p);
    let deny = |user: &[u8]| {
        let mut e = vec![0xff];
        e.extend_from_slice(&1045u16.to_le_bytes());
        e.extend_from_slice(b"#28000");
        e.extend_from_slice(
            format!("Access denied for user '{}'", String::from_utf8_lossy(user)).as_bytes(),
        );
        e
    };
    const OK: &[u8] = &[0, 0, 0, 2, 0, 0, 0];
    let Some((user, mut auth, plugin)) = parse_response(response) else {
        return Ok(());
    };
    if plugin != b"caching_sha2_password" {
        let mut switch = vec![0xfe];
        switch.extend_from_slice(b"caching_sha2_password\0");
        switch.extend_from_slice(scramble);
        switch.push(0);
        seq += 1;
        write_packet(s, seq, &switch).await?;
        let (n, a) = read_packet(s).await?;
        seq = n;
        auth = a;
    }
    // The scramble check (fast path material).
    let h = sha(&[&shared.stored[..], scramble].concat());
    let candidate: Vec<u8> = auth.iter().zip(h.iter()).map(|(a, b)| a ^ b).collect();
    let scramble_ok = auth.len() == 32 && user == shared.user && sha(&candidate) == shared.stored;
    let cached = shared.cache.lock().unwrap().contains(&user);
    if scramble_ok && cached {
        seq += 1;
        write_packet(s, seq, &[0x01, 0x03]).await?;
        seq += 1;
        write_packet(s, seq, OK).await?;
        record(Path::Fast);
        return serve_commands(s).await;
    }
    seq += 1;
    write_packet(s, seq, &[0x01, 0x04]).await?;
    let (n, mut answer) = read_packet(s).await?;
    seq = n;
    let (password, path) = if tls {
        (
            answer.strip_suffix(&[0]).unwrap_or(&answer).to_vec(),
            Path::FullTls,
        )
    } else {
        if answer == [0x02] {
            let mut more = vec![0x01];
            more.extend_from_slice(shared.pem.as_bytes());
            seq += 1;
            write_packet(s, seq, &more).await?;
            let (n, a) = read_packet(s).await?;
            seq = n;
            answer = a;
        }
        let plain = shared
            .key
            .decrypt(Oaep::new::<sha1::Sha1>(), &answer)
            .unwrap_or_default();
        let pw: Vec<u8> = plain
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ scramble[i % scramble.len()])
            .collect();
        (pw.strip_suffix(&[0]).unwrap_or(&pw).to_vec(), Path::FullRsa)
    };
    if user == shared.user && sha(&sha(&password)) == shared.stored {
        shared.cache.lock().unwrap().insert(user);
        seq += 1;
        write_packet(s, seq, OK).await?;
        record(path);
        serve_commands(s).await
    } else {
        seq += 1;
        write_packet(s, seq, &deny(&user)).await?;
        record(Path::Denied);
        Ok(())
    }
}

async fn serve_commands<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) -> std::io::Result<()> {
    loop {
        let (_, cmd) = read_packet(s).await?;
        match cmd.first() {
            Some(0x0e) => write_packet(s, 1, &[0, 0, 0, 2, 0, 0, 0]).await?,
            Some(0x01) | None => return Ok(()),
            _ => {
                let mut e = vec![0xff];
                e.extend_from_slice(&1047u16.to_le_bytes());
                e.extend_from_slice(b"#08S01Unknown command");
                write_packet(s, 1, &e).await?;
            }
        }
    }
}
