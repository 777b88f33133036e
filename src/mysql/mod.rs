//! `protocol: mysql` (MySQL and MariaDB). keyward reads the server's greeting, greets the app
//! with a HandshakeV10 of its own (the server's version and capabilities, without SSL or
//! compression, keyward's own scramble), accepts the app's HandshakeResponse (any password,
//! unless `client_password` is set), then logs in upstream: SSLRequest, TLS per the resource's
//! mode, a HandshakeResponse with the configured user and password for the server's plugin
//! (`mysql_native_password`, `caching_sha2_password` fast and full path, `client_ed25519`,
//! `mysql_clear_password` over TLS for RDS tokens), following AuthSwitchRequest and
//! AuthMoreData with `mysql_common`'s plugins. The app keeps its database, character set,
//! connection attributes and capability flags. The server's OK goes to the app with the
//! sequence id the app expects, then bytes are relayed.
//!
//! COM_CHANGE_USER from the app is answered with an ERR packet (`keyward: change user is not
//! supported`) and not forwarded: the app holds no credential to change to.

pub mod codec;

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use mysql_common::auth::plugins::{AuthProc, ChallengeResponsePlugin, Response};
use mysql_common::constants::{CapabilityFlags, StatusFlags};
use mysql_common::io::ParseBuf;
use mysql_common::packets::{
    AuthPlugin, AuthSwitchRequest, HandshakePacket, HandshakeResponse, SslRequest,
};
use mysql_common::proto::{MyDeserialize, MySerialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_util::either::Either;
use tracing::debug;

use crate::connect::{Admitted, Dialer, UpstreamStream};
use crate::db::DbRuntime;
use crate::driver::{App, Handler, Resource, Served, TlsStart};
use crate::error::{ConnError, Reason, Side};
use crate::record::{Failure, Stats};
use crate::relay::{relay, Relayed};
use crate::wire::Wire;

const COM_CHANGE_USER: u8 = 0x11;
const CHANGE_USER_REFUSED: &str =
    "keyward: change user is not supported: keyward logs in with the resource's configured credentials";
const NATIVE: &[u8] = b"mysql_native_password";
/// What keyward offers the app (and asks of the server), at most.
fn supported() -> CapabilityFlags {
    use CapabilityFlags as C;
    C::CLIENT_LONG_PASSWORD
        | C::CLIENT_FOUND_ROWS
        | C::CLIENT_LONG_FLAG
        | C::CLIENT_CONNECT_WITH_DB
        | C::CLIENT_NO_SCHEMA
        | C::CLIENT_ODBC
        | C::CLIENT_LOCAL_FILES
        | C::CLIENT_IGNORE_SPACE
        | C::CLIENT_PROTOCOL_41
        | C::CLIENT_INTERACTIVE
        | C::CLIENT_IGNORE_SIGPIPE
        | C::CLIENT_TRANSACTIONS
        | C::CLIENT_RESERVED
        | C::CLIENT_SECURE_CONNECTION
        | C::CLIENT_MULTI_STATEMENTS
        | C::CLIENT_MULTI_RESULTS
        | C::CLIENT_PS_MULTI_RESULTS
        | C::CLIENT_PLUGIN_AUTH
        | C::CLIENT_CONNECT_ATTRS
        | C::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
        | C::CLIENT_CAN_HANDLE_EXPIRED_PASSWORDS
        | C::CLIENT_SESSION_TRACK
        | C::CLIENT_DEPRECATE_EOF
}

fn random<const N: usize>() -> [u8; N] {
    use ring::rand::SecureRandom;
    let mut out = [0u8; N];
    let _ = ring::rand::SystemRandom::new().fill(&mut out);
    // A scramble must not contain NUL bytes (it is sent NUL-terminated).
    for b in &mut out {
        *b = (*b % 94) + 33;
    }
    out
}

/// A `mysql` resource's handler: the login it injects and its options.
#[derive(Debug)]
pub struct Mysql(pub DbRuntime);

impl Handler for Mysql {
    const TLS_START: TlsStart = TlsStart::InProtocol;
    /// The largest packet an app may send before keyward relays (its HandshakeResponse, an auth
    /// switch response): 64 KiB, far above what any client sends (connection attributes
    /// included) and far below `max_allowed_packet`.
    const MAX_PRE_AUTH: usize = 64 * 1024;

    /// Every failure before the relay is answered here: an ERR packet's sequence id follows
    /// the app's last packet, which only this exchange knows.
    async fn serve(&self, app: &mut App, res: &Arc<Resource>, _stats: &Arc<Stats>) -> Served {
        // The app's last sequence id: the greeting is 0, its answer 1.
        let mut seq = 1u8;
        match self.handshake(app, res, &mut seq).await {
            Ok(relayed) => Ok(relayed),
            Err(Failure::Open(e)) => {
                let reply = codec::frame(seq.wrapping_add(1), &app_error(&e, res.name.as_str()));
                let _ = app.wire.send(&reply).await;
                Err(Failure::Answered(e))
            }
            Err(other) => Err(other),
        }
    }
}

impl Mysql {
    async fn handshake(
        &self,
        app: &mut App,
        res: &Arc<Resource>,
        seq: &mut u8,
    ) -> Result<Relayed, Failure> {
        let name = res.name.as_str();
        let db = &self.0;
        let started = tokio::time::Instant::now();
        // The server's greeting first: its version and capabilities shape keyward's. No
        // credential is shown yet (TCP and the greeting only).
        let upstream = greeting(&res.dialer).await;
        let (version, server_caps, ext_caps) = match &upstream {
            Ok((_, g)) => (
                g.server_version_ref().to_vec(),
                g.capabilities(),
                g.mariadb_ext_capabilities(),
            ),
            Err(_) => (
                b"8.0.0-keyward".to_vec(),
                supported(),
                mysql_common::constants::MariadbCapabilities::empty(),
            ),
        };
        let scramble = random::<20>();
        let mut caps = server_caps & supported();
        if app.can_upgrade() {
            caps |= CapabilityFlags::CLIENT_SSL;
        }
        let hello = HandshakePacket::new(
            10,
            Cow::Owned(version.clone()),
            fastrand::u32(1..),
            scramble[..8].try_into().unwrap_or_default(),
            // 12 bytes and a NUL, as servers send it (clients read max(13, len - 8) bytes).
            Some(Cow::Owned([&scramble[8..], &[0]].concat())),
            caps,
            45,
            StatusFlags::SERVER_STATUS_AUTOCOMMIT,
            Some(Cow::Borrowed(NATIVE)),
        )
        .with_mariadb_ext_capabilities(ext_caps);
        let mut payload = Vec::new();
        hello.serialize(&mut payload);
        app.wire
            .send(&codec::frame(0, &payload))
            .await
            .map_err(Failure::Answered)?;
        // With listen_tls, the app may ask for TLS (SSLRequest: a 32-byte response with
        // CLIENT_SSL), then sends its HandshakeResponse through it.
        if app.can_upgrade() {
            let first = app
                .wire
                .message("the HandshakeResponse", |b| {
                    codec::packet(b, <Mysql as Handler>::MAX_PRE_AUTH)
                })
                .await
                .map_err(Failure::Open)?;
            let wants_tls = first.len() == 4 + 32
                && u32::from_le_bytes([first[4], first[5], first[6], first[7]])
                    & CapabilityFlags::CLIENT_SSL.bits()
                    != 0;
            if wants_tls {
                // The client starts TLS right after SSLRequest: what was read is its
                // ClientHello, which App::upgrade hands to the TLS acceptor.
                app.upgrade().await.map_err(Failure::Answered)?;
            } else {
                let rest = app.wire.buf.split();
                app.wire.buf.extend_from_slice(&first);
                app.wire.buf.extend_from_slice(&rest);
            }
        }
        let response =
            match read_app_response(&mut app.wire, db.client_password.as_ref(), &scramble, name)
                .await
            {
                Ok((response, last)) => {
                    *seq = last;
                    response
                }
                Err(AppError::Refuse(e, at)) => {
                    *seq = at.wrapping_sub(1);
                    return Err(Failure::Open(e));
                }
                Err(AppError::Io(e)) => return Err(Failure::Open(e)),
            };
        let admitted = app.admit().map_err(Failure::Open)?;
        let login = async {
            let (tcp, greeting) = upstream?;
            login(tcp, &greeting, &response, &res.dialer, db, name, &admitted).await
        };
        let (up, ok) = login.await.map_err(Failure::Open)?;
        crate::metrics::metrics()
            .auth_seconds
            .with_label_values(&[name])
            .observe(started.elapsed().as_secs_f64());
        debug!("logged in upstream");
        *seq = seq.wrapping_add(1);
        app.wire
            .send(&codec::frame(*seq, &ok))
            .await
            .map_err(Failure::Relay)?;
        let Wire { io: up_io, buf, .. } = up;
        // COM_CHANGE_USER is answered with an ERR packet and dropped.
        let mut watch = codec::CommandWatch::default();
        watch.statements = crate::audit::statements();
        let quit = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let saw_quit = quit.clone();
        let early = crate::driver::early(app);
        let app_side = crate::wire::Filtered::with_filter(
            app.relay(),
            &early,
            Box::new(move |input, out, reply| {
                for _ in 0..watch.feed(input, COM_CHANGE_USER, out) {
                    reply.extend(codec::frame(
                        1,
                        &codec::err(1105, "HY000", CHANGE_USER_REFUSED),
                    ));
                }
                for (kind, text) in watch.captured.drain(..) {
                    crate::audit::statement(kind, Some(&text), None, None);
                }
                if watch.quit {
                    saw_quit.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                Ok(())
            }),
        );
        let up_side = crate::wire::Prefixed::new(up_io, buf.freeze());
        crate::audit::started();
        match relay(app_side, up_side, res.idle_timeout).await {
            // After the app's COM_QUIT the server closes as it likes (MariaDB: TLS without
            // close_notify, or a reset when the app's close crosses it): a normal end.
            Err(e)
                if quit.load(std::sync::atomic::Ordering::Relaxed)
                    && e.side == Side::Upstream
                    && matches!(e.reason, Reason::Reset | Reason::Truncated) =>
            {
                debug!("the server closed after the app's COM_QUIT: {}", e.detail);
                Ok(Relayed::default())
            }
            other => other.map_err(Failure::Relay),
        }
    }
}

/// What keyward keeps of the app's HandshakeResponse.
#[derive(Debug, Clone)]
struct AppHello {
    caps: CapabilityFlags,
    ext: mysql_common::constants::MariadbCapabilities,
    collation: u8,
    user: Vec<u8>,
    db: Option<Vec<u8>>,
    attrs: Option<HashMap<String, String>>,
}

enum AppError {
    /// Send this error to the app (at this sequence id) and close.
    Refuse(ConnError, u8),
    Io(ConnError),
}

impl From<ConnError> for AppError {
    fn from(e: ConnError) -> Self {
        Self::Io(e)
    }
}

/// The app's HandshakeResponse, and the sequence id of the last packet it sent. With
/// `client_password`, its mysql_native_password response is checked (switching it to that
/// plugin first if it used another).
async fn read_app_response<S: AsyncRead + AsyncWrite + Unpin>(
    app: &mut Wire<S>,
    client_password: Option<&crate::db::Credential>,
    scramble: &[u8; 20],
    resource: &str,
) -> Result<(AppHello, u8), AppError> {
    let packet = app
        .message("the HandshakeResponse", |b| {
            codec::packet(b, <Mysql as Handler>::MAX_PRE_AUTH)
        })
        .await?;
    let mut seq = packet[3];
    let refuse = |detail: String, seq: u8| {
        AppError::Refuse(
            ConnError::new(Side::Client, Reason::Protocol, detail),
            seq + 1,
        )
    };
    let response = HandshakeResponse::deserialize((), &mut ParseBuf(&packet[4..]))
        .map_err(|e| refuse(format!("malformed HandshakeResponse: {e}"), seq))?;
    if response
        .capabilities()
        .contains(CapabilityFlags::CLIENT_SSL)
        && seq < 2
    {
        return Err(refuse(
            "the app asked for TLS, which this listener does not offer (no listen_tls): connect without TLS to keyward on loopback"
                .to_owned(),
            seq,
        ));
    }
    // A client that turns on what keyward never offered (compressed framing) would then speak
    // a framing nobody reads: both sides would wait until idle_timeout. Refused by name.
    let unoffered = response.capabilities()
        & (CapabilityFlags::CLIENT_COMPRESS | CapabilityFlags::CLIENT_ZSTD_COMPRESSION_ALGORITHM);
    if !unoffered.is_empty() {
        return Err(refuse(
            format!("the app turned on {unoffered:?}, which keyward did not offer: connect without compression"),
            seq,
        ));
    }
    let hello = AppHello {
        caps: response.capabilities(),
        ext: response.mariadb_ext_capabilities(),
        collation: response.collation(),
        user: response.user().to_vec(),
        db: response.db_name().map(<[u8]>::to_vec),
        attrs: response.connect_attributes(),
    };
    if let Some(expected) = client_password {
        let expected = expected.current(resource)?;
        let mut given = response.scramble_buf().to_vec();
        let plugin_is_native = response
            .auth_plugin()
            .is_none_or(|p| p.as_bytes() == NATIVE);
        if !plugin_is_native {
            let switch = AuthSwitchRequest::new(NATIVE, [&scramble[..], &[0]].concat());
            let mut payload = Vec::new();
            switch.serialize(&mut payload);
            seq = seq.wrapping_add(1);
            app.send(&codec::frame(seq, &payload)).await?;
            let answer = app
                .message("the auth switch response", |b| {
                    codec::packet(b, <Mysql as Handler>::MAX_PRE_AUTH)
                })
                .await?;
            seq = answer[3];
            given = answer[4..].to_vec();
        }
        let want = mysql_common::auth::plugins::mysql_native_password::scramble_native(
            scramble,
            expected.expose().as_bytes(),
        )
        .map(|s| s.to_vec())
        .unwrap_or_default();
        use subtle::ConstantTimeEq;
        if !bool::from(given.ct_eq(&want)) {
            return Err(AppError::Refuse(
                ConnError::new(
                    Side::Client,
                    Reason::AuthFailed,
                    "access denied: the app's password is not this resource's client_password",
                ),
                seq.wrapping_add(1),
            ));
        }
    }
    Ok((hello, seq))
}

/// For the fuzz target (`fuzz/fuzz_targets/mysql_handshake.rs`): keyward's side of the
/// handshake on arbitrary bytes, in memory: the app's HandshakeResponse (and, with a
/// `client_password`, its auth switch), and the server's greeting. The first byte splits
/// `data` into app and server bytes; its low bit turns `client_password` on. Must never panic.
#[doc(hidden)]
pub fn fuzz_handshake(data: &[u8]) {
    let Some((split, app_bytes, server_bytes)) = crate::wire::fuzz_split(data) else {
        return;
    };
    let password = crate::db::Credential::fixed(crate::secret::Secret::new("fuzz-password"));
    let client_password = (split & 1 == 1).then_some(&password);
    crate::wire::fuzz_block_on(async {
        let mut app = Wire::new(tokio::io::join(app_bytes, tokio::io::sink()), Side::Client);
        let _ = read_app_response(&mut app, client_password, &[7; 20], "fuzz").await;
        let mut up = Wire::new(
            tokio::io::join(server_bytes, tokio::io::sink()),
            Side::Upstream,
        );
        if let Ok(greeting) = read_greeting(&mut up, std::time::Duration::from_secs(1)).await {
            let _ = greeting.capabilities();
            let _ = greeting.auth_plugin();
        }
    });
}

/// TCP to the upstream and its initial handshake packet.
async fn greeting(
    dialer: &Dialer,
) -> Result<(Wire<TcpStream>, HandshakePacket<'static>), ConnError> {
    let tcp = dialer.connect().await?;
    let mut up = Wire::new(tcp, Side::Upstream);
    let greeting = read_greeting(&mut up, dialer.handshake_timeout).await?;
    Ok((up, greeting))
}

/// The server's initial handshake packet (or its refusal, as an error).
async fn read_greeting<S: AsyncRead + AsyncWrite + Unpin>(
    up: &mut Wire<S>,
    timeout: std::time::Duration,
) -> Result<HandshakePacket<'static>, ConnError> {
    let read = up.message("the server's greeting", |b| {
        codec::packet(b, codec::MAX_LOGIN_PACKET)
    });
    let packet = tokio::time::timeout(timeout, read).await.map_err(|_| {
        ConnError::new(
            Side::Upstream,
            Reason::HandshakeTimeout,
            "the server sent no greeting: is it a MySQL server?",
        )
    })??;
    if let Some((code, _, message)) = codec::parse_err(&packet[4..]) {
        return Err(ConnError::new(
            Side::Upstream,
            Reason::ConnectRefused,
            format!("the server refused the connection: {message} ({code})"),
        ));
    }
    let greeting = HandshakePacket::deserialize((), &mut ParseBuf(&packet[4..])).map_err(|e| {
        up.protocol(format!(
            "malformed server greeting ({e}): is it a MySQL server?"
        ))
    })?;
    Ok(greeting.into_owned())
}

struct PluginContext<'a> {
    password: &'a [u8],
    tls: bool,
    scramble: &'a [u8],
}

impl mysql_common::auth::plugins::Context for &PluginContext<'_> {
    fn pass(&self) -> &[u8] {
        self.password
    }
    fn is_ipc_transport(&self) -> bool {
        false
    }
    fn is_tls_transport(&self) -> bool {
        self.tls
    }
    fn scramble(&self) -> &[u8] {
        self.scramble
    }
    fn server_key_pem(&self) -> Option<&[u8]> {
        None
    }
}

/// SSLRequest + TLS, the HandshakeResponse with keyward's credentials, and the auth exchange.
/// Returns the stream and the server's OK payload.
async fn login(
    tcp: Wire<TcpStream>,
    greeting: &HandshakePacket<'static>,
    app: &AppHello,
    dialer: &Dialer,
    db: &DbRuntime,
    name: &str,
    admitted: &Admitted,
) -> Result<(Wire<UpstreamStream>, Vec<u8>), ConnError> {
    let server_caps = greeting.capabilities();
    let mut caps = (app.caps & server_caps & supported())
        | CapabilityFlags::CLIENT_PROTOCOL_41
        | CapabilityFlags::CLIENT_SECURE_CONNECTION
        | CapabilityFlags::CLIENT_PLUGIN_AUTH;
    caps &= server_caps | CapabilityFlags::CLIENT_PROTOCOL_41;
    let database = db
        .database
        .as_deref()
        .map(|d| d.as_bytes().to_vec())
        .or_else(|| app.db.clone());
    if database.is_some() {
        caps |= CapabilityFlags::CLIENT_CONNECT_WITH_DB;
    } else {
        caps.remove(CapabilityFlags::CLIENT_CONNECT_WITH_DB);
    }
    if app.attrs.is_none() {
        caps.remove(CapabilityFlags::CLIENT_CONNECT_ATTRS);
    }
    let ext = app.ext & greeting.mariadb_ext_capabilities();
    let mut seq: u8 = 0;
    let Wire {
        io: tcp,
        buf: early,
        ..
    } = tcp;
    if !early.is_empty() {
        return Err(ConnError::new(
            Side::Upstream,
            Reason::Protocol,
            "the server sent more than its greeting before keyward answered",
        ));
    }
    let stream: UpstreamStream = match dialer.tls.as_ref() {
        None => Either::Left(tcp),
        Some(tls) => {
            if !server_caps.contains(CapabilityFlags::CLIENT_SSL) {
                return Err(ConnError::new(
                    Side::Upstream,
                    Reason::Tls,
                    format!(
                        "server does not support TLS (no SSL capability) and tls.mode is {}",
                        tls.mode.as_str()
                    ),
                ));
            }
            caps |= CapabilityFlags::CLIENT_SSL;
            let request = SslRequest::new(caps, 16 * 1024 * 1024, app.collation)
                .with_mariadb_capabilities(ext);
            let mut payload = Vec::new();
            request.serialize(&mut payload);
            seq += 1;
            let mut w = Wire::new(tcp, Side::Upstream);
            w.send(&codec::frame(seq, &payload)).await?;
            Either::Right(dialer.secure(w.io, tls, admitted).await?)
        }
    };
    let on_tls = matches!(stream, Either::Right(_));
    let mut up = Wire::new(stream, Side::Upstream);
    let password = db.password(name, admitted).await?;
    let username = db
        .username()
        .map(|u| u.as_bytes().to_vec())
        .unwrap_or_else(|| app.user.clone());
    // A plain copy for the auth plugins, wiped when the login is over.
    let pw = zeroize::Zeroizing::new(
        password
            .as_ref()
            .map(|p| p.expose().as_bytes().to_vec())
            .unwrap_or_default(),
    );
    let mut scramble = greeting.nonce();
    let mut plugin: AuthPlugin<'static> = greeting
        .auth_plugin()
        .map(|p| p.into_owned())
        .unwrap_or(AuthPlugin::MysqlNativePassword);
    if db.is_rds_iam() {
        plugin = AuthPlugin::MysqlClearPassword;
    }
    let mut proc = start_plugin(&plugin, on_tls)?;
    let first = step(
        &mut proc,
        &plugin,
        &pw,
        on_tls,
        &scramble,
        &scramble.clone(),
        db,
    )?;
    let attrs = app.attrs.clone();
    let response = HandshakeResponse::new(
        Some(Cow::Owned(first.unwrap_or_default())),
        greeting.server_version_parsed().unwrap_or((8, 0, 0)),
        Some(Cow::Owned(username.clone())),
        database.map(Cow::Owned),
        Some(plugin.clone()),
        caps,
        attrs,
        16 * 1024 * 1024,
    )
    .with_mariadb_ext_capabilities(ext);
    let mut payload = Vec::new();
    response.serialize(&mut payload);
    // Keep the app's character set (byte 8: after capabilities and max packet size).
    if payload.len() > 8 {
        payload[8] = app.collation;
    }
    seq += 1;
    up.send(&codec::frame(seq, &payload)).await?;
    let user_text = String::from_utf8_lossy(&username).into_owned();
    crate::audit::identity(&user_text);
    let exchange = async {
        loop {
            let packet = up
                .message("the server's auth reply", |b| {
                    codec::packet(b, codec::MAX_LOGIN_PACKET)
                })
                .await?;
            seq = packet[3];
            let body = &packet[4..];
            match body.first() {
                Some(0x00) => return Ok(body.to_vec()),
                Some(0xff) => {
                    let (code, _state, message) = codec::parse_err(body).unwrap_or_default();
                    return Err(ConnError::new(
                        Side::Upstream,
                        Reason::AuthFailed,
                        format!("{message} (server error {code})"),
                    ));
                }
                Some(0xfe) => {
                    let switch = AuthSwitchRequest::deserialize((), &mut ParseBuf(body))
                        .map_err(|e| up.protocol(format!("malformed AuthSwitchRequest: {e}")))?;
                    plugin = switch.auth_plugin().into_owned();
                    let data = switch.plugin_data();
                    scramble = switch_data(&plugin, data);
                    debug!(plugin = %String::from_utf8_lossy(plugin.as_bytes()), "auth switch");
                    proc = start_plugin(&plugin, on_tls)?;
                    let answer = step(
                        &mut proc,
                        &plugin,
                        &pw,
                        on_tls,
                        &scramble,
                        &scramble.clone(),
                        db,
                    )?;
                    seq = seq.wrapping_add(1);
                    up.send(&codec::frame(seq, &answer.unwrap_or_default()))
                        .await?;
                }
                Some(0x01) => {
                    let answer = step(&mut proc, &plugin, &pw, on_tls, &scramble, &body[1..], db)?;
                    if let Some(answer) = answer {
                        seq = seq.wrapping_add(1);
                        up.send(&codec::frame(seq, &answer)).await?;
                    }
                }
                _ => return Err(up.protocol("unexpected packet during authentication".to_owned())),
            }
        }
    };
    let ok = tokio::time::timeout(dialer.handshake_timeout, exchange)
        .await
        .map_err(|_| {
            ConnError::new(
                Side::Upstream,
                Reason::HandshakeTimeout,
                format!("the server did not finish the login of user \"{user_text}\""),
            )
        })??;
    Ok((up, ok))
}

/// The challenge in an AuthSwitchRequest's plugin data. `mysql_native_password` and
/// `caching_sha2_password` send a 20-byte scramble and a NUL terminator (MySQL docs,
/// "Protocol::AuthSwitchRequest"); MariaDB's `client_ed25519` sends its 32-byte nonce raw,
/// and a nonce may well end in 0x00 (1 in 256), so nothing is stripped from it.
fn switch_data(plugin: &AuthPlugin<'_>, data: &[u8]) -> Vec<u8> {
    if matches!(plugin, AuthPlugin::Ed25519) {
        return data.to_vec();
    }
    data.strip_suffix(&[0]).unwrap_or(data).to_vec()
}

fn start_plugin(plugin: &AuthPlugin<'_>, tls: bool) -> Result<AuthProc, ConnError> {
    let refuse = |detail: String| ConnError::new(Side::Internal, Reason::AuthFailed, detail);
    if matches!(plugin, AuthPlugin::MysqlClearPassword) && !tls {
        return Err(refuse(
            "the server asks for the password in clear text (mysql_clear_password) over a connection without TLS; keyward refuses".to_owned(),
        ));
    }
    AuthProc::init(plugin).map_err(|e| refuse(format!("{e}: keyward speaks mysql_native_password, caching_sha2_password, client_ed25519 and mysql_clear_password")))
}

/// One plugin step; refuses caching_sha2_password's RSA exchange unless allowed.
fn step(
    proc: &mut AuthProc,
    plugin: &AuthPlugin<'_>,
    pw: &[u8],
    tls: bool,
    scramble: &[u8],
    challenge: &[u8],
    db: &DbRuntime,
) -> Result<Option<Vec<u8>>, ConnError> {
    let ctx = PluginContext {
        password: pw,
        tls,
        scramble,
    };
    let response = proc.run(&ctx, challenge).map_err(|e| {
        ConnError::new(
            Side::Upstream,
            Reason::AuthFailed,
            format!(
                "{} exchange failed: {e}",
                String::from_utf8_lossy(plugin.as_bytes())
            ),
        )
    })?;
    let data = match &response {
        Response::Next { packet } | Response::Last { packet } => packet.clone(),
    };
    if matches!(plugin, AuthPlugin::CachingSha2Password)
        && !tls
        && data.as_deref() == Some(&[0x02][..])
        && !db.allow_rsa_key_exchange
    {
        return Err(ConnError::new(
            Side::Internal,
            Reason::AuthFailed,
            "caching_sha2_password full authentication without TLS needs the server's RSA key; keyward refuses (use TLS, or set auth.allow_rsa_key_exchange: true)",
        ));
    }
    Ok(data)
}

/// The ERR packet for a keyward failure (SQLSTATE 28000 for authentication, 08S01 otherwise).
pub fn app_error(e: &ConnError, resource: &str) -> Vec<u8> {
    let (code, state) = match e.reason {
        Reason::AuthFailed | Reason::ClientCertRequired => (1045, "28000"),
        Reason::Protocol | Reason::ClientHandshakeTimeout | Reason::MessageTooLarge
            if e.side == Side::Client =>
        {
            (1043, "08S01")
        }
        _ => (1159, "08S01"),
    };
    let message = match e.side {
        Side::Client => format!("keyward: resource \"{resource}\": {}", e.detail),
        _ => format!("keyward: upstream \"{resource}\": {}", e.detail),
    };
    codec::err(code, state, &message)
}

/// `keyward probe`: the whole login as the resource would do it.
pub async fn probe_login(res: &Resource, db: &DbRuntime) -> Result<String, ConnError> {
    let (tcp, greeting) = greeting(&res.dialer).await?;
    let user = db.username().unwrap_or("root").as_bytes().to_vec();
    let app = AppHello {
        caps: supported(),
        ext: greeting.mariadb_ext_capabilities(),
        collation: 45,
        user: user.clone(),
        db: db.database.as_ref().map(|d| d.as_bytes().to_vec()),
        attrs: None,
    };
    // keyward's own operator command: no app is involved.
    let admitted = Admitted::grant();
    login(
        tcp,
        &greeting,
        &app,
        &res.dialer,
        db,
        res.name.as_str(),
        &admitted,
    )
    .await?;
    Ok(format!(
        "user \"{}\" logged in to {} {}",
        String::from_utf8_lossy(&user),
        if greeting.server_version_str().contains("MariaDB") {
            "MariaDB"
        } else {
            "MySQL"
        },
        greeting.server_version_str()
    ))
}

/// `keyward probe`: read the greeting and send SSLRequest (for the TLS report).
pub async fn probe_ssl_request(
    tcp: &mut TcpStream,
    timeout: std::time::Duration,
) -> Result<(), ConnError> {
    use tokio::io::AsyncWriteExt;
    let greeting = read_greeting(&mut Wire::new(&mut *tcp, Side::Upstream), timeout).await?;
    if !greeting
        .capabilities()
        .contains(CapabilityFlags::CLIENT_SSL)
    {
        return Err(ConnError::new(
            Side::Upstream,
            Reason::Tls,
            "the server does not support TLS (no SSL capability)",
        ));
    }
    let caps = supported() | CapabilityFlags::CLIENT_SSL;
    let mut payload = Vec::new();
    SslRequest::new(caps, 16 * 1024 * 1024, 45).serialize(&mut payload);
    tcp.write_all(&codec::frame(1, &payload))
        .await
        .map_err(|e| ConnError::from_io(Side::Upstream, &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ed25519_nonce_ending_in_nul_keeps_all_32_bytes() {
        let mut nonce = [7u8; 32];
        nonce[31] = 0;
        assert_eq!(switch_data(&AuthPlugin::Ed25519, &nonce), nonce.to_vec());
        let mut native = vec![5u8; 20];
        native.push(0);
        assert_eq!(
            switch_data(&AuthPlugin::MysqlNativePassword, &native),
            vec![5u8; 20]
        );
    }

    #[test]
    fn clear_password_is_refused_without_tls() {
        let refused = start_plugin(&AuthPlugin::MysqlClearPassword, false).unwrap_err();
        assert_eq!(refused.reason, Reason::AuthFailed);
        assert!(refused.detail.contains("without TLS"), "{}", refused.detail);
        assert!(start_plugin(&AuthPlugin::MysqlClearPassword, true).is_ok());
    }
}
