//! `protocol: redis`. When the app sends its first command, keyward opens the upstream
//! connection (TLS per the resource's mode, mTLS if configured) and authenticates on it
//! (`AUTH user pass` for an ACL user, `AUTH pass` otherwise) before relaying a byte. The app
//! holds no credential: its own `AUTH` (and the `AUTH` part of `HELLO`) is rewritten in place
//! to keyward's credentials, so the server still answers it in order (`+OK`);
//! `pass_client_auth: true` forwards the app's own instead.
//!
//! With `client_password`, the app must first `AUTH` (or `HELLO ... AUTH`) with that password;
//! until then keyward answers `-NOAUTH` itself and forwards nothing.
//!
//! Failures reach the app as `-ERR keyward: upstream "NAME": <reason>`, then the connection
//! closes.

pub mod acl;
pub mod scan;

use std::sync::Arc;

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::debug;

use crate::connect::Admitted;
use crate::db::DbRuntime;
use crate::driver::{App, Handler, Resource, Served, TlsStart};
use crate::error::{ConnError, Reason, Side, Violation};
use crate::record::{Failure, Stats};
use crate::relay::{relay, Relayed};
use crate::secret::Secret;
use crate::wire::Wire;

/// How long keyward waits for the app's first command before it sends an error and closes.
const ERROR_GRACE: Duration = Duration::from_secs(5);

/// A `redis` resource's handler: the login it injects and its options.
#[derive(Debug)]
pub struct Redis(pub DbRuntime);

impl Handler for Redis {
    const TLS_START: TlsStart = TlsStart::Accept;
    /// The largest command an app may send before keyward relays (with `client_password`: its
    /// AUTH or HELLO, and anything it pipelines behind them). Larger is refused with `-ERR`.
    const MAX_PRE_AUTH: usize = 64 * 1024;

    async fn serve(&self, app: &mut App, res: &Arc<Resource>, stats: &Arc<Stats>) -> Served {
        let name = res.name.as_str();
        let db = &self.0;
        if let Some(expected) = &db.client_password {
            let expected = expected.current(name).map_err(Failure::Open)?;
            match client_auth(&mut app.wire, &expected).await {
                Ok(true) => {}
                Ok(false) => return Ok(Relayed::default()),
                Err(e) => return Err(Failure::Open(e)),
            }
        }
        let admitted = app.admit().map_err(Failure::Open)?;
        // The upstream login waits for the app's first command: a connection that never sends
        // one (a pool's spare, a port scan, a connect-and-reset storm) costs no upstream
        // session, and an idle one holds no upstream TLS.
        if !app.first_bytes().await.map_err(Failure::Relay)? {
            return Ok(Relayed::default());
        }
        // The session on the heap, allocated once the app has spoken: a connection waiting
        // for its first command holds only the small future of the wait (an idle flood of
        // 10,000 connections would otherwise hold ~17 KB each).
        Box::pin(session(app, res, stats, db, admitted)).await
    }

    /// `-ERR keyward: ...`, then a graceful close: the app's first command is read first, so
    /// the error is its reply (a close with unread data would reset the connection instead).
    async fn refuse(&self, app: &mut App, e: &ConnError, resource: &str) {
        let app = &mut app.wire;
        if app.buf.is_empty() {
            let _ = tokio::time::timeout(ERROR_GRACE, app.io.read_buf(&mut app.buf)).await;
        }
        answer(&mut app.io, e, resource).await;
    }
}

/// Everything after the app's first command: keyward's login upstream, then the relay (with
/// the AUTH rewrite and command scanner where configured).
async fn session(
    app: &mut App,
    res: &Arc<Resource>,
    stats: &Arc<Stats>,
    db: &DbRuntime,
    admitted: Admitted,
) -> Served {
    let name = res.name.as_str();
    let username = db.username().map(str::to_owned);
    let password = db.password(name, &admitted).await.map_err(Failure::Open)?;
    // With client_password the app's AUTH was checked above and is not forwarded;
    // otherwise its AUTH/HELLO AUTH become keyward's (unless pass_client_auth).
    let rewrite = match (&password, db.pass_client_auth) {
        (Some(password), false) => Some((username.clone(), password.clone())),
        _ => None,
    };
    let early = crate::driver::early(app);
    // Command rules and statement events need every command's name; the AUTH rewrite
    // only AUTH and HELLO. Without any of them the app's bytes pass untouched.
    let policy = db.commands.clone();
    let statements = crate::audit::statements();
    let mut app = if rewrite.is_some() || policy.is_some() || statements {
        let mut scanner = scan::Scanner::with(policy, statements);
        let stats = stats.clone();
        crate::wire::Filtered::with_filter(
            app.relay(),
            &early,
            Box::new(move |input, out, reply| {
                let fed = scanner.feed(input, out, &mut |args| match &rewrite {
                    Some((user, password)) => rewrite_auth(args, user.as_deref(), password),
                    None => {
                        let refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
                        scan::command(&refs)
                    }
                });
                for seen in scanner.seen.drain(..) {
                    record_seen(&seen, &stats);
                }
                // Refused: the app gets Redis's own kind of answer, then the close
                // Redis itself does after a protocol error.
                fed.map_err(|why| {
                    reply.extend(format!("-ERR {why}\r\n").as_bytes());
                    Violation(why.to_string()).into_io()
                })
            }),
        )
    } else {
        crate::wire::Filtered::new(app.relay(), early)
    };
    // A first command Redis would refuse (an oversized bulk, a broken header) is answered
    // here, without an upstream session.
    if let Some(e) = app.refused_at_once().await {
        return Err(Failure::Answered(ConnError::from_io(Side::Client, &e)));
    }
    let started = tokio::time::Instant::now();
    let opened = async {
        let upstream = res.dialer.open(&admitted).await?;
        let mut up = Wire::new(upstream, Side::Upstream);
        if let Some(password) = &password {
            login(
                &mut up,
                username.as_deref(),
                password,
                res.dialer.handshake_timeout,
            )
            .await?;
        }
        Ok::<_, ConnError>(up)
    };
    let up = match opened.await {
        Ok(up) => up,
        Err(e) => {
            // The app's first command was read already: the error is its reply.
            answer(&mut app, &e, name).await;
            return Err(Failure::Answered(e));
        }
    };
    crate::metrics::metrics()
        .auth_seconds
        .with_label_values(&[name])
        .observe(started.elapsed().as_secs_f64());
    debug!(
        user = username.as_deref().unwrap_or("default"),
        "authenticated upstream"
    );
    crate::audit::identity(username.as_deref().unwrap_or("default"));
    crate::audit::started();
    let Wire { io: up_io, buf, .. } = up;
    let up_io = crate::wire::Prefixed::new(up_io, buf.freeze());
    relay(app, up_io, res.idle_timeout)
        .await
        .map_err(Failure::Relay)
}

/// Sends `e` as the reply to the app's command, then closes gracefully (what the app sends
/// meanwhile is read and dropped: a close with unread data would reset the connection).
async fn answer<S: AsyncRead + AsyncWrite + Unpin>(app: &mut S, e: &ConnError, resource: &str) {
    let detail = e.detail.replace(['\r', '\n'], " ");
    let line = match e.side {
        Side::Client => format!("-ERR keyward: resource \"{resource}\": {detail}\r\n"),
        _ => format!("-ERR keyward: upstream \"{resource}\": {detail}\r\n"),
    };
    let _ = app.write_all(line.as_bytes()).await;
    let _ = app.flush().await;
    let _ = app.shutdown().await;
    let mut sink = [0u8; 1024];
    let _ = tokio::time::timeout(Duration::from_millis(200), async {
        while matches!(app.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// `AUTH [user] pass` on a fresh upstream connection; `+OK` or the server's error.
async fn login<S: AsyncRead + AsyncWrite + Unpin>(
    up: &mut Wire<S>,
    username: Option<&str>,
    password: &Secret,
    timeout: Duration,
) -> Result<(), ConnError> {
    let cmd = zeroize::Zeroizing::new(auth_command(username, password));
    let exchange = async {
        up.send(&cmd).await?;
        let reply = up
            .message("the reply to AUTH", |b| {
                redis_protocol::resp2::decode::decode(b).map(|found| found.map(|(_, used)| used))
            })
            .await?;
        Ok::<_, ConnError>(reply)
    };
    let reply = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| {
            ConnError::new(
                Side::Upstream,
                Reason::HandshakeTimeout,
                "the server did not answer AUTH",
            )
        })??;
    use redis_protocol::resp2::types::OwnedFrame;
    match redis_protocol::resp2::decode::decode(&reply) {
        Ok(Some((OwnedFrame::SimpleString(s), _))) if s == b"OK" => Ok(()),
        Ok(Some((OwnedFrame::Error(e), _))) => Err(ConnError::new(
            Side::Upstream,
            Reason::AuthFailed,
            e.to_string(),
        )),
        _ => Err(ConnError::new(
            Side::Upstream,
            Reason::Protocol,
            "unexpected reply to AUTH: is the upstream a Redis server?",
        )),
    }
}

fn auth_command(username: Option<&str>, password: &Secret) -> Vec<u8> {
    match username {
        Some(user) => scan::command(&[b"AUTH", user.as_bytes(), password.expose().as_bytes()]),
        None => scan::command(&[b"AUTH", password.expose().as_bytes()]),
    }
}

/// Rewrites an app's AUTH / HELLO AUTH to keyward's credentials.
/// A command the scanner saw: a statement event, or a denial (event, metric, rate-limited
/// warning).
fn record_seen(seen: &scan::Seen, stats: &Stats) {
    match seen {
        scan::Seen::Command(name, keys) => {
            crate::audit::statement("command", None, Some(name), *keys);
        }
        scan::Seen::Denied(name, rule) => {
            crate::audit::denied(crate::audit::Denied::Command { name, rule });
            let e = ConnError::new(
                Side::Client,
                Reason::Denied,
                format!("command \"{name}\" refused ({rule})"),
            );
            if let Some(left_out) = stats.may_warn() {
                let left_out = (left_out > 0).then_some(left_out);
                tracing::warn!(
                    side = "client",
                    reason = "denied",
                    left_out,
                    "app: {}",
                    e.detail
                );
            }
            stats.failed(e);
        }
    }
}

fn rewrite_auth(args: Vec<Vec<u8>>, username: Option<&str>, password: &Secret) -> Vec<u8> {
    let user = username.unwrap_or("default").as_bytes();
    let pw = password.expose().as_bytes();
    let is_auth = args
        .first()
        .is_some_and(|n| n.eq_ignore_ascii_case(b"auth"));
    if is_auth {
        return auth_command(username, password);
    }
    hello_with_auth(&args, Some((user, pw)))
}

/// `HELLO [protover [AUTH username password] [SETNAME clientname]]` with its AUTH part
/// replaced by `auth`, or taken out when `auth` is `None`.
fn hello_with_auth(args: &[Vec<u8>], auth: Option<(&[u8], &[u8])>) -> Vec<u8> {
    let mut out: Vec<&[u8]> = Vec::with_capacity(args.len());
    let mut i = 0;
    while i < args.len() {
        if i >= 2 && args[i].eq_ignore_ascii_case(b"auth") && i + 2 < args.len() {
            if let Some((user, pw)) = auth {
                out.extend([&args[i][..], user, pw]);
            }
            i += 3;
        } else {
            out.push(&args[i]);
            i += 1;
        }
    }
    scan::command(&out)
}

/// `client_password`: commands before a successful AUTH are answered by keyward. `Ok(false)`:
/// the app left.
async fn client_auth<S: AsyncRead + AsyncWrite + Unpin>(
    app: &mut Wire<S>,
    expected: &Secret,
) -> Result<bool, ConnError> {
    use subtle::ConstantTimeEq;
    loop {
        let frame = |b: &[u8]| match redis_protocol::resp2::decode::decode(b) {
            Ok(found) => Ok(found.map(|(_, used)| used)),
            Err(e) => Err(e.to_string()),
        };
        let cmd = match app.message("a command", frame).await {
            Ok(cmd) => cmd,
            Err(e) if e.reason == Reason::Truncated => return Ok(false),
            Err(e) => return Err(e),
        };
        let args = scan::args_of(&cmd).unwrap_or_default();
        let name = args
            .first()
            .map(|n| n.to_ascii_uppercase())
            .unwrap_or_default();
        let given = match name.as_slice() {
            b"AUTH" if args.len() == 2 || args.len() == 3 => args.last().cloned(),
            b"HELLO" => args
                .iter()
                .position(|a| a.eq_ignore_ascii_case(b"auth"))
                .and_then(|i| args.get(i + 2).cloned()),
            b"QUIT" => {
                app.send(b"+OK\r\n").await?;
                return Ok(false);
            }
            _ => None,
        };
        let Some(given) = given else {
            app.send(b"-NOAUTH Authentication required.\r\n").await?;
            continue;
        };
        if bool::from(given.ct_eq(expected.expose().as_bytes())) {
            if name == b"AUTH" {
                app.send(b"+OK\r\n").await?;
            } else {
                // HELLO goes on to the server without the app's AUTH part: that holds
                // keyward's local client_password, which the server must never see. (keyward
                // logged in upstream itself, if it has a password.)
                let mut rest = hello_with_auth(&args, None);
                rest.extend_from_slice(&app.buf);
                app.buf.clear();
                app.buf.extend_from_slice(&rest);
            }
            return Ok(true);
        }
        app.send(b"-WRONGPASS invalid username-password pair or user is disabled.\r\n")
            .await?;
    }
}

/// `keyward probe`: connect and AUTH as the resource would.
pub async fn probe_login(res: &Resource, db: &DbRuntime) -> Result<String, ConnError> {
    // keyward's own operator command: no app is involved.
    let admitted = Admitted::grant();
    let upstream = res.dialer.open(&admitted).await?;
    let mut up = Wire::new(upstream, Side::Upstream);
    let username = db.username().map(str::to_owned);
    match db.password(res.name.as_str(), &admitted).await? {
        Some(password) => {
            login(
                &mut up,
                username.as_deref(),
                &password,
                res.dialer.handshake_timeout,
            )
            .await?;
            Ok(format!(
                "AUTH accepted for user \"{}\"",
                username.as_deref().unwrap_or("default")
            ))
        }
        None => Ok("connected (no credential configured)".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hello_that_passed_client_password_loses_its_auth_part() {
        let args: Vec<Vec<u8>> = [
            "HELLO",
            "3",
            "AUTH",
            "default",
            "local-secret",
            "SETNAME",
            "x",
        ]
        .iter()
        .map(|a| a.as_bytes().to_vec())
        .collect();
        assert_eq!(
            hello_with_auth(&args, None),
            scan::command(&[b"HELLO", b"3", b"SETNAME", b"x"])
        );
    }

    #[test]
    fn hello_auth_is_rewritten_and_other_arguments_kept() {
        let pw = Secret::new("kpw");
        let out = rewrite_auth(
            vec![
                b"HELLO".to_vec(),
                b"3".to_vec(),
                b"AUTH".to_vec(),
                b"app".to_vec(),
                b"apppw".to_vec(),
                b"SETNAME".to_vec(),
                b"x".to_vec(),
            ],
            Some("proxyuser"),
            &pw,
        );
        assert_eq!(
            out,
            scan::command(&[
                b"HELLO",
                b"3",
                b"AUTH",
                b"proxyuser",
                b"kpw",
                b"SETNAME",
                b"x"
            ])
        );
        assert_eq!(
            rewrite_auth(vec![b"auth".to_vec(), b"whatever".to_vec()], None, &pw),
            scan::command(&[b"AUTH", b"kpw"])
        );
        assert_eq!(
            rewrite_auth(vec![b"HELLO".to_vec(), b"2".to_vec()], None, &pw),
            scan::command(&[b"HELLO", b"2"])
        );
    }
}
