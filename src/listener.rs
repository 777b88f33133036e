//! Binding the resources' listeners: TCP (`host:port`, port 0 = any free port) and Unix
//! sockets (`unix:PATH`, stale socket replaced, mode 0600 by default).

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio_util::either::Either;

use crate::config::{ListenAddr, ResourceName};

/// A connection from an application, as accepted.
pub type RawStream = Either<TcpStream, UnixStream>;

/// keyward's TLS with an app, over the accepted stream and any bytes read before the
/// handshake (a MySQL client starts TLS right after its SSLRequest, without waiting).
pub type InboundStream = tokio_rustls::server::TlsStream<crate::wire::Prefixed<RawStream>>;

/// Where a listener actually bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BoundAddr {
    /// A TCP address (with the real port when 0 was asked for).
    Tcp(SocketAddr),
    /// A Unix socket path.
    Unix(PathBuf),
}

impl fmt::Display for BoundAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(addr) => write!(f, "{addr}"),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// A bound listener of one resource.
#[derive(Debug)]
pub struct Bound {
    /// The resource it serves.
    pub resource: ResourceName,
    /// Its address.
    pub addr: BoundAddr,
    pub(crate) listener: Listener,
}

#[derive(Debug)]
pub(crate) enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// All bound listeners, one per resource.
#[derive(Debug, Default)]
pub struct Listeners(pub(crate) Vec<Bound>);

/// A listener that could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("resource \"{resource}\": cannot listen on {addr}: {reason}")]
pub struct BindError {
    /// Which resource.
    pub resource: ResourceName,
    /// The address asked for.
    pub addr: ListenAddr,
    /// Why.
    pub reason: String,
}

impl Listeners {
    /// Binds one listener per (resource, address): `Runtime::listens()`.
    pub async fn bind<'a>(
        resources: impl IntoIterator<Item = (&'a ResourceName, &'a ListenAddr)>,
    ) -> Result<Self, BindError> {
        let mut bound = Vec::new();
        for (name, listen) in resources {
            bound.push(bind_one(name, listen).await?);
        }
        Ok(Self(bound))
    }

    /// The bound address of a resource.
    pub fn addr(&self, resource: &str) -> Option<&BoundAddr> {
        self.0
            .iter()
            .find(|b| b.resource.as_str() == resource)
            .map(|b| &b.addr)
    }

    /// Every resource and its bound address.
    pub fn addrs(&self) -> impl Iterator<Item = (&ResourceName, &BoundAddr)> {
        self.0.iter().map(|b| (&b.resource, &b.addr))
    }
}

/// Binds the listener of one resource.
pub(crate) async fn bind_one(
    resource: &ResourceName,
    listen: &ListenAddr,
) -> Result<Bound, BindError> {
    let fail = |reason: String| BindError {
        resource: resource.clone(),
        addr: listen.clone(),
        reason,
    };
    let (listener, addr) = match listen {
        ListenAddr::Tcp(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|e| fail(bind_reason(&e)))?;
            let local = listener.local_addr().map_err(|e| fail(e.to_string()))?;
            (Listener::Tcp(listener), BoundAddr::Tcp(local))
        }
        ListenAddr::Unix { path, mode } => {
            let listener = bind_unix(path, *mode).map_err(fail)?;
            (Listener::Unix(listener), BoundAddr::Unix(path.clone()))
        }
    };
    Ok(Bound {
        resource: resource.clone(),
        addr,
        listener,
    })
}

fn bind_reason(err: &io::Error) -> String {
    match err.kind() {
        io::ErrorKind::AddrInUse => {
            "address already in use (another process listens there)".to_owned()
        }
        io::ErrorKind::AddrNotAvailable => "address not available on this host".to_owned(),
        io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
        _ => err.to_string(),
    }
}

fn bind_unix(path: &Path, mode: u32) -> Result<UnixListener, String> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(format!(
                "{} exists and is not a socket; refusing to replace it",
                path.display()
            ));
        }
        // A socket file nobody accepts on is left over from a previous run: replace it.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(format!(
                "another process is listening on {}",
                path.display()
            ));
        }
        std::fs::remove_file(path).map_err(|e| format!("removing stale socket: {e}"))?;
    }
    // Bound in a private directory (0700) beside the target, given its mode there, then
    // renamed into place: no moment where the socket exists with the umask's permissions, and
    // the mode is set on the socket itself (nobody can plant a symlink in the private
    // directory; rename replaces a link at `path` instead of following it).
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let private = tempfile::Builder::new()
        .prefix(".keyward-bind-")
        .tempdir_in(&parent)
        .map_err(|e| format!("creating a private directory in {}: {e}", parent.display()))?;
    let staged = private.path().join("socket");
    let listener = UnixListener::bind(&staged).map_err(|e| bind_reason(&e))?;
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("setting mode {mode:o}: {e}"))?;
    std::fs::rename(&staged, path).map_err(|e| format!("moving the socket into place: {e}"))?;
    Ok(listener)
}

/// A bound listener off any runtime: each worker (`crate::workers`) accepts on a copy of it
/// registered with its own event loop.
#[derive(Debug)]
pub(crate) enum DetachedListener {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener),
}

impl DetachedListener {
    /// Another handle on the same socket.
    pub(crate) fn try_clone(&self) -> io::Result<Self> {
        Ok(match self {
            Self::Tcp(l) => Self::Tcp(l.try_clone()?),
            Self::Unix(l) => Self::Unix(l.try_clone()?),
        })
    }

    /// Registers it with the current runtime.
    pub(crate) fn attach(self) -> io::Result<Listener> {
        Ok(match self {
            Self::Tcp(l) => Listener::Tcp(TcpListener::from_std(l)?),
            Self::Unix(l) => Listener::Unix(UnixListener::from_std(l)?),
        })
    }
}

/// An accepted connection off any runtime, on its way to the worker that serves it.
#[derive(Debug)]
pub(crate) enum DetachedStream {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

impl DetachedStream {
    /// Takes an accepted connection off the runtime that accepted it.
    pub(crate) fn detach(stream: RawStream) -> io::Result<Self> {
        Ok(match stream {
            Either::Left(s) => Self::Tcp(s.into_std()?),
            Either::Right(s) => Self::Unix(s.into_std()?),
        })
    }

    /// Registers it with the current runtime.
    pub(crate) fn attach(self) -> io::Result<RawStream> {
        Ok(match self {
            Self::Tcp(s) => Either::Left(TcpStream::from_std(s)?),
            Self::Unix(s) => Either::Right(UnixStream::from_std(s)?),
        })
    }
}

impl Listener {
    /// Takes it off the runtime that bound it.
    pub(crate) fn detach(self) -> io::Result<DetachedListener> {
        Ok(match self {
            Self::Tcp(l) => DetachedListener::Tcp(l.into_std()?),
            Self::Unix(l) => DetachedListener::Unix(l.into_std()?),
        })
    }

    pub(crate) async fn accept(&self) -> io::Result<(RawStream, String)> {
        match self {
            Self::Tcp(l) => {
                let (stream, peer) = l.accept().await?;
                stream.set_nodelay(true)?;
                Ok((Either::Left(stream), peer.to_string()))
            }
            Self::Unix(l) => {
                let (stream, _) = l.accept().await?;
                Ok((Either::Right(stream), "unix".to_owned()))
            }
        }
    }
}
