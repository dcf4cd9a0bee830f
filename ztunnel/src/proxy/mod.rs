//! The data path: one module per listener or mechanism.
//!
//! - [`outbound`]: connections captured from local pods (15001).
//! - [`inbound`]: HBONE from other nodes (15008): mTLS, CONNECT, policy, the pod.
//! - [`inbound_passthrough`]: plaintext to local pods (15006), PERMISSIVE only.
//! - [`inbound_capture`]: the plaintext listeners in local pods' namespaces the
//!   node's inbound capture hands connections from outside the mesh to.
//! - [`dns`]: the DNS proxy (15053, UDP and TCP): local pods' captured DNS queries.
//! - [`pool`] and [`hbone`]: the HTTP/2 CONNECT client and server and the connection pool.
//! - [`connection`]: relaying bytes, counting them, and reporting the connection.
//! - [`revocation`]: open connections checked again when the policies change.

pub mod connection;
pub mod dns;
pub mod hbone;
pub mod inbound;
pub mod inbound_capture;
pub mod inbound_passthrough;
pub mod outbound;
pub mod pool;
pub mod revocation;

use std::{
    fs::File,
    future::Future,
    io,
    net::SocketAddr,
    os::fd::{AsFd, AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
    sync::Arc,
    time::Duration,
};

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tracing::{debug, info, warn};

use crate::{config::Config, drain, metrics::Metrics, state::State, tls::ServerConfigs};

/// What every listener's connections share.
pub struct Inputs {
    pub config: Arc<Config>,
    pub state: Arc<State>,
    pub metrics: Arc<Metrics>,
    pub pool: pool::Pool,
    pub server_tls: ServerConfigs<State>,
    pub dns: crate::dns::Resolver,
    /// Open connections a destination's policies admitted: closed once the
    /// policies refuse them.
    pub authorized: revocation::Authorized,
    /// The plaintext inbound listeners' task ([`inbound_capture`]).
    pub capture: Arc<inbound_capture::Control>,
}

impl Inputs {
    pub fn new(config: Arc<Config>, state: Arc<State>, metrics: Arc<Metrics>) -> Arc<Inputs> {
        Arc::new(Inputs {
            pool: pool::Pool::new(Arc::clone(&config)),
            server_tls: ServerConfigs::new(Arc::clone(&state)),
            dns: crate::dns::Resolver::new(config.dns_servers.clone()),
            authorized: revocation::Authorized::default(),
            capture: Arc::default(),
            config,
            state,
            metrics,
        })
    }
}

/// Sets `SO_MARK` (before connect: the capture hook reads it then). Needs CAP_NET_ADMIN.
pub fn set_mark(socket: &impl AsFd, mark: u32) -> io::Result<()> {
    const LEN: libc::socklen_t = size_of::<u32>() as libc::socklen_t;
    // SAFETY: the fd is open for the borrow's lifetime; the kernel reads `LEN` bytes
    // from a live u32.
    let result = unsafe {
        libc::setsockopt(
            socket.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MARK,
            (&raw const mark).cast(),
            LEN,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A TCP connection from ztunnel itself: marked (so it is never captured), no Nagle,
/// bounded in time.
pub async fn connect(
    addr: SocketAddr,
    mark: Option<u32>,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    connect_socket(socket, addr, mark, timeout).await
}

/// As [`connect`], from inside the network namespace at `netns` (a pod's): the
/// connection leaves from the pod, with its address and routes.
pub async fn connect_in(
    netns: &Path,
    addr: SocketAddr,
    mark: Option<u32>,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let socket = socket_in(netns, addr.is_ipv4()).await?;
    connect_socket(socket, addr, mark, timeout).await
}

/// A TCP socket made inside the network namespace at `netns`; a socket keeps
/// the namespace it was made in. `setns` moves only the calling thread, so it
/// is made on a thread of its own that ends with it: a runtime thread left in
/// a pod's namespace would make every later socket there (about 50 µs a
/// connection, only for destinations outside the mesh).
async fn socket_in(netns: &Path, v4: bool) -> io::Result<TcpSocket> {
    let file = File::open(netns)
        .map_err(|e| io::Error::new(e.kind(), format!("opening {}: {e}", netns.display())))?;
    let shown = netns.display().to_string();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("ztunnel-netns".into())
        .spawn(move || {
            let made = (|| {
                // SAFETY: `file` is an open namespace file for the call.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    let error = io::Error::last_os_error();
                    return Err(io::Error::new(
                        error.kind(),
                        format!("entering the network namespace {shown}: {error}"),
                    ));
                }
                let domain = if v4 { libc::AF_INET } else { libc::AF_INET6 };
                let kind = libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
                // SAFETY: plain socket(2); the fd is owned right after.
                let fd = unsafe { libc::socket(domain, kind, 0) };
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                // SAFETY: a fresh descriptor nothing else owns.
                Ok(unsafe { OwnedFd::from_raw_fd(fd) })
            })();
            // The receiver went away only if the connection was given up.
            let _ = tx.send(made);
        })?;
    let fd = rx
        .await
        .map_err(|_| io::Error::other("the network namespace thread ended without a socket"))??;
    Ok(TcpSocket::from_std_stream(std::net::TcpStream::from(fd)))
}

async fn connect_socket(
    socket: TcpSocket,
    addr: SocketAddr,
    mark: Option<u32>,
    timeout: Duration,
) -> io::Result<TcpStream> {
    if let Some(mark) = mark {
        set_mark(&socket, mark)?;
    }
    socket.set_nodelay(true)?;
    match tokio::time::timeout(timeout, socket.connect(addr)).await {
        Ok(stream) => stream,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("connecting to {addr} took over {timeout:?}"),
        )),
    }
}

/// Closes with a reset rather than a FIN, so the client sees a failure, not an empty
/// answer.
pub fn reset(stream: TcpStream) {
    if let Err(error) = stream.set_zero_linger() {
        debug!(%error, "setting SO_LINGER 0 failed; closing normally");
    }
    drop(stream);
}

/// Accepts until draining starts; each connection runs in its own task holding a drain
/// watch, so the drain waits for it.
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    mut drain: drain::Watch,
    name: &'static str,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr, drain::Watch) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let local = listener.local_addr().ok();
    loop {
        let accepted = tokio::select! {
            biased;
            () = drain.draining() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                if let Err(error) = stream.set_nodelay(true) {
                    debug!(%peer, %error, "TCP_NODELAY failed on an accepted connection");
                }
                tokio::spawn(handle(stream, peer, drain.clone()));
            }
            Err(error) => {
                // Typically EMFILE: back off instead of spinning, the listener stays.
                warn!(listener = name, %error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    info!(listener = name, addr = ?local, "stopped accepting (draining)");
}
