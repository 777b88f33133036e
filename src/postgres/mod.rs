//! `protocol: postgres`. The app connects as to any PostgreSQL server, with no password;
//! keyward opens a TLS connection to the real server (SSLRequest, or direct TLS for
//! PostgreSQL 17+), logs in with the configured credentials (SCRAM-SHA-256[-PLUS], MD5,
//! cleartext over TLS, or certificate auth), gives the app the server's startup messages with
//! a backend key of keyward's own, and then relays bytes.
//!
//! Every failure before the relay reaches the app as an ErrorResponse whose message starts
//! with `keyward:`, so psql prints it; the server's own login errors are passed on unchanged.

pub mod cancel;
pub mod codec;
pub mod dial;
pub mod guard;
pub mod pool;
pub mod scram;

use std::sync::Arc;
use std::time::Duration;

use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_util::either::Either;
use tracing::debug;

use crate::config::Negotiation;
use crate::connect::{Admitted, UpstreamStream};
use crate::db::DbRuntime;
use crate::driver::{App, Handler, Resource, Served, TlsStart};
use crate::error::{ConnError, Reason, Side};
use crate::record::{Failure, Stats};
use crate::relay::{relay, relay_watched, End, Relayed};
use crate::secret::Secret;
use crate::wire::Wire;
use codec::{AuthRequest, Initial, LoginMessage, Startup};

/// A `postgres` resource's handler: the login it injects and its options.
#[derive(Debug)]
pub struct Postgres(pub DbRuntime);

impl Handler for Postgres {
    const TLS_START: TlsStart = TlsStart::Sniffed;
    /// The largest message an app may send before keyward relays: a StartupMessage is at most
    /// 10,000 bytes (as the server enforces), a SCRAM message for `client_password` far less.
    const MAX_PRE_AUTH: usize = 64 * 1024;

    async fn serve(&self, app: &mut App, res: &Arc<Resource>, _stats: &Arc<Stats>) -> Served {
        let startup = loop {
            let can_upgrade = app.can_upgrade();
            match read_startup(&mut app.wire, res, can_upgrade)
                .await
                .map_err(Failure::Open)?
            {
                Next::Startup(startup) => break startup,
                Next::Done => return Ok(Relayed::default()),
                Next::Upgrade => {
                    if !app.wire.buf.is_empty() {
                        // Bytes sent before the TLS handshake must not be taken as if they
                        // came through it (CVE-2021-23214).
                        return Err(Failure::Open(ConnError::new(
                            Side::Client,
                            Reason::Protocol,
                            "unencrypted data after SSLRequest",
                        )));
                    }
                    app.upgrade().await.map_err(Failure::Open)?;
                }
            }
        };
        let admitted = app.admit().map_err(Failure::Open)?;
        // The session on the heap, allocated once the startup packet is in: a connection that
        // has not sent one (a pool's spare, an idle flood) holds only the small future of the
        // wait, not the session's (~23 KB inline).
        Box::pin(session(app, startup, res, &self.0, &admitted)).await
    }

    async fn refuse(&self, app: &mut App, e: &ConnError, resource: &str) {
        let _ = app.wire.send(&app_error(e, resource)).await;
    }
}

/// What the first packets asked for.
enum Next {
    Startup(Startup),
    /// SSLRequest answered `S`: TLS starts now.
    Upgrade,
    /// Nothing more to do (a cancel, or the app left).
    Done,
}

/// Reads SSLRequest / GSSENCRequest (answered `N`), CancelRequest (forwarded) or the
/// StartupMessage. `None`: nothing more to do on this connection.
async fn read_startup<S: AsyncRead + AsyncWrite + Unpin>(
    app: &mut Wire<S>,
    res: &Resource,
    can_upgrade: bool,
) -> Result<Next, ConnError> {
    loop {
        let (initial, len) = loop {
            match codec::parse_initial(&app.buf) {
                Ok(Some(found)) => break found,
                Ok(None) if app.buf.is_empty() => match app.fill("a startup packet").await {
                    Ok(()) => {}
                    // A client that connects and leaves (a port probe) is not an error.
                    Err(e) if e.reason == Reason::Truncated => return Ok(Next::Done),
                    Err(e) => return Err(e),
                },
                Ok(None) => app.fill("a startup packet").await?,
                Err(e) => return Err(app.protocol(e.to_string())),
            }
        };
        let _ = app.buf.split_to(len);
        match initial {
            Initial::Ssl if can_upgrade => {
                app.send(b"S").await?;
                return Ok(Next::Upgrade);
            }
            Initial::Ssl | Initial::GssEnc => app.send(b"N").await?,
            Initial::Cancel { pid, key } => {
                cancel::forward(&res.name, pid, &key).await;
                return Ok(Next::Done);
            }
            Initial::Startup(startup) => return Ok(Next::Startup(startup)),
        }
    }
}

async fn session(
    app: &mut App,
    mut startup: Startup,
    res: &Arc<Resource>,
    db: &DbRuntime,
    admitted: &Admitted,
) -> Result<Relayed, Failure> {
    let name = res.name.as_str();
    if let Some(expected) = &db.client_password {
        let expected = expected.current(name).map_err(Failure::Open)?;
        check_app_password(&mut app.wire, &expected)
            .await
            .map_err(Failure::Open)?;
    }
    if let Some(user) = db.username() {
        startup.set("user", user);
    }
    if let Some(database) = &db.database {
        startup.set("database", database);
    }
    if db.read_only {
        if startup
            .get("options")
            .is_some_and(guard::options_touch_read_only)
        {
            return Err(Failure::Open(ConnError::new(
                Side::Client,
                Reason::Denied,
                "this resource is read_only: startup options may not set transaction_read_only",
            )));
        }
        startup.set("default_transaction_read_only", "on");
    }
    let user = startup.get("user").unwrap_or_default().to_owned();
    let started = tokio::time::Instant::now();
    let pool_key = startup.encode();
    let pooled = if db.pool.enabled() {
        take_alive(&db.pool, &pool_key, admitted).await
    } else {
        None
    };
    let reused = pooled.is_some();
    let login = async {
        if let Some(idle) = pooled {
            crate::connect::audit_upstream(&idle.up.io);
            // A reset server session: the app gets its login messages again.
            let mut messages = codec::auth_ok();
            messages.extend_from_slice(&idle.params);
            let key_at = messages.len();
            messages.extend_from_slice(&codec::ready_for_query(b'I'));
            let greeting = Greeting {
                messages,
                backend_key: Some((idle.pid, idle.key)),
                key_at,
            };
            return Ok::<_, LoginError>((idle.up, greeting, idle.params));
        }
        let upstream = dial::open(&res.dialer, db.negotiation, admitted).await?;
        let binding = channel_binding(&upstream);
        let mut up = Wire::new(upstream, Side::Upstream);
        up.send(&pool_key).await?;
        let password = db.password(name, admitted).await?;
        let timeout = res.dialer.handshake_timeout;
        let greeting =
            tokio::time::timeout(timeout, login(&mut up, db, &user, password, binding, name))
                .await
                .map_err(|_| {
                    ConnError::new(
                        Side::Upstream,
                        Reason::HandshakeTimeout,
                        format!(
                            "the server did not finish the login within {}",
                            humantime::format_duration(timeout)
                        ),
                    )
                })??;
        let params = codec::messages_tagged(&greeting.messages, b'S');
        Ok((up, greeting, params))
    };
    let (mut up, mut greeting, params) = match login.await {
        Ok(done) => done,
        Err(LoginError::Keyward(e)) => return Err(Failure::Open(e)),
        Err(LoginError::Server { raw, code, message }) => {
            let _ = app.wire.send(&raw).await;
            return Err(Failure::Answered(ConnError::new(
                Side::Upstream,
                Reason::AuthFailed,
                format!(
                    "the server refused the login of user \"{user}\": {message} (SQLSTATE {code})"
                ),
            )));
        }
    };
    if !reused {
        crate::metrics::metrics()
            .auth_seconds
            .with_label_values(&[name])
            .observe(started.elapsed().as_secs_f64());
    }
    // Rewrite BackendKeyData: the app gets a key of keyward's own.
    let server_key = greeting.backend_key.clone();
    let registration = match greeting.backend_key.take() {
        Some((pid, key)) => {
            let target = cancel::Target {
                resource: res.name.clone(),
                dialer: res.dialer.clone(),
                negotiation: db.negotiation,
                pid,
                key,
            };
            let (registration, own_pid, own_key) = cancel::register(target);
            greeting.messages.splice(
                greeting.key_at..greeting.key_at,
                codec::backend_key_data(own_pid, &own_key),
            );
            Some(registration)
        }
        None => None,
    };
    debug!(user = %user, reused, "logged in upstream");
    crate::audit::identity(&user);
    crate::audit::client_tls(app.wire.io.tls());
    crate::audit::started();
    // Whatever either side sent past the login goes first.
    greeting.messages.extend_from_slice(&up.buf);
    up.buf.clear();
    let early = app.wire.buf.split();
    // read_only and statement events watch the app's messages from here on (what it sent
    // early too); other resources relay untouched.
    let guard = guard::Guard {
        read_only: db.read_only,
        statements: crate::audit::statements(),
    };
    let sent = async {
        app.wire.send(&greeting.messages).await?;
        if !early.is_empty() && !guard.active() {
            up.send(&early).await?;
        }
        Ok::<_, ConnError>(())
    };
    sent.await.map_err(Failure::Relay)?;
    let app_io = app.relay();
    let mut app_side = if guard.active() {
        let mut filter = guard::AppFilter::new(guard);
        tokio_util::either::Either::Right(crate::wire::Filtered::with_filter(
            app_io,
            &early,
            Box::new(move |input, out, _reply| {
                filter.feed(input, out);
                Ok(())
            }),
        ))
    } else {
        tokio_util::either::Either::Left(app_io)
    };
    let Some((pid, key)) = server_key.filter(|_| db.pool.enabled() && early.is_empty()) else {
        return relay(app_side, up.io, res.idle_timeout)
            .await
            .map_err(Failure::Relay);
    };
    // Message-aware relay: an app's Terminate while the server is idle leaves the server
    // connection reusable.
    let (mut from_app, mut from_server) = (pool::Frames::app(), pool::Frames::server());
    let (relayed, end) = relay_watched(
        &mut app_side,
        &mut up.io,
        res.idle_timeout,
        &mut from_app,
        &mut from_server,
    )
    .await
    .map_err(Failure::Relay)?;
    // The app's cancel key dies with its session, before the server connection can serve
    // another app: a late CancelRequest must never reach the next app's query.
    drop(registration);
    if end == End::Stopped && from_server.settled(&from_app) && reset(&mut up).await {
        db.pool.put(pool_key, pool::Idle::new(up, params, pid, key));
    }
    Ok(relayed)
}

/// An idle pooled connection the server has not closed meanwhile (an idle server connection
/// has nothing to say: anything readable is an EOF, an error or a termination notice).
async fn take_alive(pool: &pool::Pool, key: &[u8], admitted: &Admitted) -> Option<pool::Idle> {
    while let Some(mut idle) = pool.take(key, admitted) {
        // One poll, no timer: an idle, live connection has nothing to read.
        let mut probe = [0u8; 1];
        let quiet = std::future::poll_fn(|cx| {
            let mut buf = tokio::io::ReadBuf::new(&mut probe);
            match std::pin::Pin::new(&mut idle.up.io).poll_read(cx, &mut buf) {
                std::task::Poll::Pending => std::task::Poll::Ready(true),
                std::task::Poll::Ready(_) => std::task::Poll::Ready(false),
            }
        })
        .await;
        if quiet {
            return Some(idle);
        }
        debug!("dropping a pooled server connection the server closed");
    }
    None
}

/// `DISCARD ALL` on a server connection whose app left; whether it is clean for reuse.
async fn reset(up: &mut Wire<UpstreamStream>) -> bool {
    let exchange = async {
        up.send(&codec::query("DISCARD ALL")).await?;
        // Nothing else is outstanding (the session was settled): the first ReadyForQuery is
        // the reset's own, and it counts only after DISCARD ALL's CommandComplete.
        let mut completed = false;
        loop {
            let msg = up
                .message("the reply to DISCARD ALL", |b| {
                    codec::frame(b, codec::MAX_AUTH_MESSAGE)
                })
                .await?;
            match msg.first() {
                Some(b'C') => completed = true,
                Some(b'Z') => return Ok::<_, ConnError>(completed && msg.get(5) == Some(&b'I')),
                Some(b'E') => return Ok(false),
                _ => {}
            }
        }
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(5), exchange).await,
        Ok(Ok(true))
    ) && up.buf.is_empty()
}

/// `None` without TLS; with TLS, the `tls-server-end-point` data of the server's certificate
/// (`None` inside when its signature algorithm has no single hash).
fn channel_binding(upstream: &UpstreamStream) -> Option<Option<Vec<u8>>> {
    match upstream {
        Either::Right(tls) => Some(
            tls.get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|leaf| crate::tls::tls_server_end_point(leaf)),
        ),
        Either::Left(_) => None,
    }
}

/// SCRAM-SHA-256 with the app, for `client_password`.
async fn check_app_password<S: AsyncRead + AsyncWrite + Unpin>(
    app: &mut Wire<S>,
    expected: &Secret,
) -> Result<(), ConnError> {
    let server = scram::ScramServer::new(expected.expose())
        .ok_or_else(|| ConnError::new(Side::Internal, Reason::Io, "no randomness for SCRAM"))?;
    scram_exchange(app, server).await
}

/// The SCRAM exchange with the app, against `server` (made for the expected password).
async fn scram_exchange<S: AsyncRead + AsyncWrite + Unpin>(
    app: &mut Wire<S>,
    mut server: scram::ScramServer,
) -> Result<(), ConnError> {
    let refused = |why: String| ConnError::new(Side::Client, Reason::AuthFailed, why);
    app.send(&codec::auth_sasl(&["SCRAM-SHA-256"])).await?;
    let frame = |b: &[u8]| codec::frame(b, codec::MAX_AUTH_MESSAGE);
    let first = app.message("the SASLInitialResponse", frame).await?;
    let (mechanism, data) =
        codec::parse_sasl_initial(&first).map_err(|e| app.protocol(e.to_string()))?;
    if mechanism != "SCRAM-SHA-256" {
        return Err(refused(format!(
            "the app chose SASL mechanism \"{mechanism}\"; keyward offers SCRAM-SHA-256"
        )));
    }
    let reply = server
        .client_first(&data)
        .map_err(|e| refused(format!("client_password: {e:?}")))?;
    app.send(&codec::auth_sasl_data(11, &reply)).await?;
    let last = app.message("the SASLResponse", frame).await?;
    let data = codec::parse_sasl_response(&last).map_err(|e| app.protocol(e.to_string()))?;
    match server.client_final(data) {
        Ok(reply) => app.send(&codec::auth_sasl_data(12, &reply)).await,
        Err(scram::ScramError::Proof) => Err(refused(
            "password authentication failed: the app's password is not this resource's client_password".to_owned(),
        )),
        Err(e) => Err(refused(format!("client_password: {e:?}"))),
    }
}

/// What the server sent from AuthenticationOk to ReadyForQuery, to pass to the app.
struct Greeting {
    messages: Vec<u8>,
    /// The server's BackendKeyData, cut out of `messages` at `key_at`.
    backend_key: Option<(i32, Vec<u8>)>,
    key_at: usize,
}

enum LoginError {
    /// keyward's own failure: sent to the app as a `keyward:` ErrorResponse.
    Keyward(ConnError),
    /// The server's ErrorResponse, passed on unchanged.
    Server {
        raw: bytes::Bytes,
        code: String,
        message: String,
    },
}

impl From<ConnError> for LoginError {
    fn from(e: ConnError) -> Self {
        Self::Keyward(e)
    }
}

fn auth_error(detail: String) -> LoginError {
    LoginError::Keyward(ConnError::new(Side::Internal, Reason::AuthFailed, detail))
}

/// Answers the server's authentication requests with the configured credential.
async fn login<S: AsyncRead + AsyncWrite + Unpin>(
    up: &mut Wire<S>,
    db: &DbRuntime,
    user: &str,
    password: Option<Secret>,
    binding: Option<Option<Vec<u8>>>,
    resource: &str,
) -> Result<Greeting, LoginError> {
    let on_tls = binding.is_some();
    let need_password = |method: &str| {
        password.as_ref().ok_or_else(|| {
            auth_error(format!(
                "the server asks for a password ({method}) for user \"{user}\" but resource \"{resource}\" has no auth.password"
            ))
        })
    };
    let mut scram: Option<ScramSha256> = None;
    let mut greeting = Greeting {
        messages: Vec::new(),
        backend_key: None,
        key_at: 0,
    };
    let mut authenticated = false;
    loop {
        let msg = up
            .message("the server's login messages", |b| {
                codec::frame(b, codec::MAX_AUTH_MESSAGE)
            })
            .await?;
        let parsed = codec::parse_login(&msg).map_err(|e| up.protocol(e.to_string()))?;
        match parsed {
            LoginMessage::Error { code, message } => {
                return Err(LoginError::Server {
                    raw: msg,
                    code,
                    message,
                })
            }
            LoginMessage::Auth(_) if authenticated => {
                return Err(up
                    .protocol("authentication request after AuthenticationOk".to_owned())
                    .into())
            }
            LoginMessage::Auth(AuthRequest::Ok) => {
                if scram.is_some() {
                    return Err(up
                        .protocol("AuthenticationOk before the SCRAM exchange finished".to_owned())
                        .into());
                }
                authenticated = true;
                greeting.messages.extend_from_slice(&msg);
            }
            LoginMessage::Auth(AuthRequest::Cleartext) => {
                let pw = need_password("cleartext")?;
                if !on_tls && !db.allow_cleartext_password {
                    return Err(auth_error("the server asks for the password in clear text over a connection without TLS; keyward refuses (set auth.allow_cleartext_password: true to allow it)".to_owned()));
                }
                // Plain copies of the password are wiped after use (zeroize on drop).
                let mut data = zeroize::Zeroizing::new(pw.expose().as_bytes().to_vec());
                data.push(0);
                let message = zeroize::Zeroizing::new(codec::password_message(&data));
                up.send(&message).await?;
            }
            LoginMessage::Auth(AuthRequest::Md5(salt)) => {
                let pw = need_password("md5")?;
                let hash = postgres_protocol::authentication::md5_hash(
                    user.as_bytes(),
                    pw.expose().as_bytes(),
                    salt,
                );
                let mut data = zeroize::Zeroizing::new(hash.into_bytes());
                data.push(0);
                let message = zeroize::Zeroizing::new(codec::password_message(&data));
                up.send(&message).await?;
            }
            LoginMessage::Auth(AuthRequest::Sasl(mechanisms)) => {
                let pw = need_password("SCRAM-SHA-256")?;
                let plus = mechanisms.iter().any(|m| m == "SCRAM-SHA-256-PLUS");
                let (mechanism, channel) = match &binding {
                    Some(Some(hash)) if plus => (
                        "SCRAM-SHA-256-PLUS",
                        ChannelBinding::tls_server_end_point(hash.clone()),
                    ),
                    Some(_) => ("SCRAM-SHA-256", ChannelBinding::unrequested()),
                    None => ("SCRAM-SHA-256", ChannelBinding::unsupported()),
                };
                if mechanism == "SCRAM-SHA-256" && !mechanisms.iter().any(|m| m == mechanism) {
                    return Err(auth_error(format!(
                        "the server offers SASL mechanisms {mechanisms:?}; keyward speaks SCRAM-SHA-256 and SCRAM-SHA-256-PLUS"
                    )));
                }
                debug!(mechanism, "SCRAM login");
                let exchange = ScramSha256::new(pw.expose().as_bytes(), channel);
                up.send(&codec::sasl_initial_response(mechanism, exchange.message()))
                    .await?;
                scram = Some(exchange);
            }
            LoginMessage::Auth(AuthRequest::SaslContinue(data)) => {
                let exchange = scram
                    .as_mut()
                    .ok_or_else(|| up.protocol("SASLContinue without SASL".to_owned()))?;
                exchange.update(&data).map_err(|e| {
                    auth_error(format!("SCRAM exchange with the server failed: {e}"))
                })?;
                up.send(&codec::password_message(exchange.message()))
                    .await?;
            }
            LoginMessage::Auth(AuthRequest::SaslFinal(data)) => {
                let mut exchange = scram
                    .take()
                    .ok_or_else(|| up.protocol("SASLFinal without SASL".to_owned()))?;
                exchange.finish(&data).map_err(|e| {
                    auth_error(format!("the server's SCRAM signature does not verify ({e}): it does not know the password, or something between keyward and it does"))
                })?;
            }
            LoginMessage::Auth(AuthRequest::Unsupported(method)) => {
                return Err(auth_error(format!(
                    "the server asks for {method} authentication, which keyward does not speak"
                )))
            }
            LoginMessage::BackendKeyData { pid, key } => {
                greeting.backend_key = Some((pid, key));
                greeting.key_at = greeting.messages.len();
            }
            LoginMessage::ReadyForQuery if authenticated => {
                greeting.messages.extend_from_slice(&msg);
                return Ok(greeting);
            }
            LoginMessage::ReadyForQuery => {
                return Err(up
                    .protocol("ReadyForQuery before AuthenticationOk".to_owned())
                    .into())
            }
            LoginMessage::Other(_) => greeting.messages.extend_from_slice(&msg),
        }
    }
}

/// The ErrorResponse for a keyward failure: SQLSTATE by reason, message naming the resource.
pub fn app_error(e: &ConnError, resource: &str) -> Vec<u8> {
    let code = match e.reason {
        Reason::Resolve
        | Reason::ConnectRefused
        | Reason::ConnectTimeout
        | Reason::ConnectFailed => "08001",
        Reason::AuthFailed => "28P01",
        // invalid_authorization_specification: no (allowed) client certificate.
        Reason::ClientCertRequired => "28000",
        Reason::Protocol | Reason::ClientHandshakeTimeout | Reason::MessageTooLarge
            if e.side == Side::Client =>
        {
            "08P01"
        }
        _ => "08006",
    };
    let message = match e.side {
        Side::Client => format!("keyward: resource \"{resource}\": {}", e.detail),
        _ => format!("keyward: upstream \"{resource}\": {}", e.detail),
    };
    codec::error_response("FATAL", code, &message)
}

/// For the fuzz target (`fuzz/fuzz_targets/postgres.rs`): runs keyward's side of the startup
/// and login exchanges against arbitrary bytes, in memory. The first byte splits `data` into
/// what the app sends and what the server sends. Must never panic.
#[doc(hidden)]
pub fn fuzz_exchange(data: &[u8]) {
    if let Some((_, app_bytes, server_bytes)) = crate::wire::fuzz_split(data) {
        crate::wire::fuzz_block_on(fuzz_async(app_bytes, server_bytes));
    }
}

async fn fuzz_async(app_bytes: &[u8], server_bytes: &[u8]) {
    {
        // The app's side: startup packets, then a SCRAM exchange for client_password.
        let mut app = Wire::new(tokio::io::join(app_bytes, tokio::io::sink()), Side::Client);
        loop {
            match codec::parse_initial(&app.buf) {
                Ok(Some((Initial::Startup(s), len))) => {
                    let _ = app.buf.split_to(len);
                    let _ = s.encode();
                    break;
                }
                Ok(Some((_, len))) => {
                    let _ = app.buf.split_to(len);
                }
                Ok(None) => {
                    if app.fill("fuzz").await.is_err() {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        // The verifier (4096 PBKDF2 rounds) is made once: the exchange is what is fuzzed.
        static VERIFIER: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
            postgres_protocol::password::scram_sha_256(b"fuzz-password")
        });
        if let Some(server) = scram::ScramServer::from_verifier(&VERIFIER, "fuzz-nonce") {
            let _ = scram_exchange(&mut app, server).await;
        }
        // The pooling watch: a feed split anywhere agrees with the whole feed (a Terminate
        // found in pieces is at the same offset, unless the whole feed's Terminate header
        // straddles the cut: its first bytes were passed on, so it is followed like any
        // message and a later one may stop the split feed; the server's state ends the same).
        for bytes in [app_bytes, server_bytes] {
            let cut = bytes.len() / 3;
            let (mut whole, mut split) = (pool::Frames::app(), pool::Frames::app());
            let stop = whole.feed(bytes);
            let split_stop = split
                .feed(&bytes[..cut])
                .or_else(|| split.feed(&bytes[cut..]).map(|at| cut + at));
            let straddled = stop.is_some_and(|at| at < cut && cut < at + 5);
            assert!(
                split_stop.is_none() || split_stop == stop || (straddled && split_stop > stop),
                "{split_stop:?} vs {stop:?}"
            );
            let (mut whole, mut split) = (pool::Frames::server(), pool::Frames::server());
            whole.feed(bytes);
            split.feed(&bytes[..cut]);
            split.feed(&bytes[cut..]);
            assert_eq!(
                (whole.idle(), whole.at_boundary(), whole.last, whole.cycles),
                (split.idle(), split.at_boundary(), split.last, split.cycles)
            );
        }
        // The server's side: keyward answering its authentication requests.
        let db = DbRuntime {
            login: crate::db::Login::None,
            database: None,
            client_password: None,
            allow_cleartext_password: true,
            allow_rsa_key_exchange: false,
            pass_client_auth: false,
            negotiation: Negotiation::Postgres,
            pool: pool::Pool::new(0, Duration::ZERO),
            read_only: false,
            commands: None,
        };
        for binding in [None, Some(None), Some(Some(vec![7u8; 32]))] {
            let mut up = Wire::new(
                tokio::io::join(server_bytes, tokio::io::sink()),
                Side::Upstream,
            );
            let _ = login(
                &mut up,
                &db,
                "fuzz",
                Some(Secret::new("pw")),
                binding,
                "fuzz",
            )
            .await;
        }
    }
}

/// `keyward probe`: a whole login as the resource would do it (TLS per mode, the configured
/// credential), then Terminate. Returns what was logged in as.
pub async fn probe_login(res: &Resource, db: &DbRuntime) -> Result<String, ConnError> {
    // keyward's own operator command: no app is involved.
    let admitted = Admitted::grant();
    let user = db.username().unwrap_or("postgres").to_owned();
    let database = db.database.clone().unwrap_or_else(|| "postgres".to_owned());
    let startup = Startup {
        major: 3,
        minor: 0,
        params: vec![
            ("user".to_owned(), user.clone()),
            ("database".to_owned(), database.clone()),
            ("application_name".to_owned(), "keyward-probe".to_owned()),
        ],
    };
    let upstream = dial::open(&res.dialer, db.negotiation, &admitted).await?;
    let binding = channel_binding(&upstream);
    let mut up = Wire::new(upstream, Side::Upstream);
    up.send(&startup.encode()).await?;
    let password = db.password(res.name.as_str(), &admitted).await?;
    let result = tokio::time::timeout(
        res.dialer.handshake_timeout,
        login(&mut up, db, &user, password, binding, res.name.as_str()),
    )
    .await
    .map_err(|_| ConnError::new(Side::Upstream, Reason::HandshakeTimeout, "login timed out"))?;
    match result {
        Ok(_) => {
            let _ = up.send(&[b'X', 0, 0, 0, 4]).await;
            Ok(format!(
                "user \"{user}\" logged in to database \"{database}\""
            ))
        }
        Err(LoginError::Keyward(e)) => Err(e),
        Err(LoginError::Server { code, message, .. }) => Err(ConnError::new(
            Side::Upstream,
            Reason::AuthFailed,
            format!("{message} (SQLSTATE {code})"),
        )),
    }
}

/// `keyward probe`: SSLRequest on a fresh connection (for the TLS report).
pub async fn probe_ssl_request(
    tcp: &mut TcpStream,
    res: &crate::config::ResourceConfig,
) -> Result<(), ConnError> {
    if res.tls.negotiation == Negotiation::Direct {
        return Ok(());
    }
    dial::ssl_request(tcp, &res.upstream, res.tls.mode, res.handshake_timeout).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db(allow_cleartext_password: bool) -> DbRuntime {
        DbRuntime {
            login: crate::db::Login::None,
            database: None,
            client_password: None,
            allow_cleartext_password,
            allow_rsa_key_exchange: false,
            pass_client_auth: false,
            negotiation: Negotiation::Postgres,
            pool: pool::Pool::new(0, Duration::ZERO),
            read_only: false,
            commands: None,
        }
    }

    /// A server asking for the password in clear text over a connection without TLS: refused
    /// unless allow_cleartext_password, which sends it.
    #[tokio::test]
    async fn cleartext_without_tls_needs_allow_cleartext_password() {
        let cleartext = [&b"R"[..], &[0, 0, 0, 8, 0, 0, 0, 3]].concat();
        let mut server = cleartext.clone();
        server.extend(codec::auth_ok());
        server.extend(codec::ready_for_query(b'I'));
        let run = |allow: bool| {
            let server = server.clone();
            async move {
                let mut sent = Vec::new();
                let mut up = Wire::new(tokio::io::join(&server[..], &mut sent), Side::Upstream);
                let result =
                    login(&mut up, &db(allow), "u", Some(Secret::new("pw")), None, "r").await;
                drop(up);
                (result.map(|_| ()), sent)
            }
        };
        let (refused, sent) = run(false).await;
        match refused {
            Err(LoginError::Keyward(e)) => {
                assert_eq!(e.reason, Reason::AuthFailed);
                assert!(
                    e.detail.contains("allow_cleartext_password"),
                    "{}",
                    e.detail
                );
            }
            _ => panic!("cleartext over plaintext was not refused"),
        }
        assert!(sent.is_empty(), "nothing sent: {sent:?}");
        let (allowed, sent) = run(true).await;
        assert!(allowed.is_ok());
        assert_eq!(sent, codec::password_message(b"pw\0"));
    }

    /// The fuzz target's body over a fixed corpus: handcrafted exchanges and seeded random
    /// mutations of them (the cargo-fuzz run explores further; see fuzz/README.md).
    #[test]
    fn the_login_exchange_survives_a_seeded_corpus() {
        let startup = Startup {
            major: 3,
            minor: 0,
            params: vec![("user".into(), "u".into())],
        }
        .encode();
        let server: Vec<Vec<u8>> = vec![
            codec::auth_sasl(&["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]),
            codec::auth_sasl_data(11, b"r=abc,s=c2FsdA==,i=4096"),
            codec::auth_sasl_data(12, b"v=AAAA"),
            [&b"R"[..], &[0, 0, 0, 12, 0, 0, 0, 5, 1, 2, 3, 4]].concat(),
            [&b"R"[..], &[0, 0, 0, 8, 0, 0, 0, 0]].concat(),
            codec::backend_key_data(1, &[1, 2, 3, 4]),
            codec::error_response("FATAL", "28P01", "no"),
            [&b"Z"[..], &[0, 0, 0, 5, b'I']].concat(),
        ];
        let mut seeds: Vec<Vec<u8>> = Vec::new();
        for cut in [0u8, 64, 128, 255] {
            let mut input = vec![cut];
            input.extend_from_slice(&startup);
            input.extend(server.concat());
            seeds.push(input);
        }
        let mut rng = fastrand::Rng::with_seed(7);
        let mut corpus = seeds.clone();
        for _ in 0..300 {
            let mut m = seeds[rng.usize(..seeds.len())].clone();
            let edits = rng.usize(1..8);
            crate::wire::mutate(&mut rng, &mut m, edits);
            corpus.push(m);
        }
        for input in corpus {
            fuzz_exchange(&input);
        }
    }
}
