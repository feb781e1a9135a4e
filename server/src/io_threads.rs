//! Connections served thread-per-core: each accepted connection lives its whole life on one
//! of `n` single-threaded runtimes.
//!
//! Why not tokio's multi-threaded runtime, as `axum::serve` uses: its work-stealing scheduler
//! keeps every request's task movable between workers, so every wake-up goes through shared
//! queues and atomics, and a request often runs on a core whose caches hold nothing of its
//! connection. A connection pinned to one thread keeps its buffers, its task and the model's
//! hot code in one core's cache (`loadtests/hot_path.sh` measures the difference). The price
//! is that a request that computes for long on its I/O thread delays the other connections of
//! that thread, not of all threads; cheap models run inline only below
//! `batching.inline_below_us`, and everything slower goes to the model's compute threads.
//!
//! The listener stays on the caller's runtime: accepting there and moving the socket costs one
//! cross-thread hand-off per connection, not per request, and needs no `SO_REUSEPORT`.

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tower::ServiceExt;

/// The single-threaded runtimes connections are spread over. Dropping it stops the threads
/// (after their connections are gone: `serve` waits for them).
pub struct IoThreads {
    handles: Vec<tokio::runtime::Handle>,
    next: AtomicUsize,
    _stop: Vec<tokio::sync::oneshot::Sender<()>>,
}

impl IoThreads {
    /// Starts `n` threads (at least one), each running its own current-thread runtime.
    pub fn start(n: usize, name: &str) -> io::Result<IoThreads> {
        let mut handles = Vec::new();
        let mut stops = Vec::new();
        for i in 0..n.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(runtime.handle().clone());
            let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
            stops.push(stop_tx);
            std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || {
                    runtime.block_on(async {
                        let _ = stop_rx.await;
                    });
                })?;
        }
        Ok(IoThreads {
            handles,
            next: AtomicUsize::new(0),
            _stop: stops,
        })
    }

    /// How many threads serve connections.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Never true: `start` makes at least one thread.
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    fn pick(&self) -> &tokio::runtime::Handle {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        &self.handles[i]
    }
}

/// The default number of I/O threads: one per usable core.
pub fn default_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Serves `router` (HTTP/1.1 and HTTP/2, as `axum::serve` does) on connections accepted from
/// `listener`, each on one of `threads`, until `shutdown` resolves; then stops accepting, asks
/// every connection to finish its in-flight requests and close, and returns once all have.
/// Handlers see the peer address as `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    threads: &IoThreads,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Small responses go out at once: with Nagle's algorithm on, a response written in
        // several pieces (HTTP/2 headers, data and trailers frames) waits for the client's
        // delayed ACK.
        let _ = tcp.set_nodelay(true);
        // The socket must be registered with the reactor of the thread that serves it, or every
        // readiness event would cross threads.
        let tcp = match tcp.into_std() {
            Ok(tcp) => tcp,
            Err(e) => {
                tracing::debug!(error = %e, "Could not hand an accepted connection over.");
                continue;
            }
        };
        let service = router
            .clone()
            .map_request(move |mut request: axum::extract::Request<_>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                request
            });
        let watcher = graceful.watcher();
        threads.pick().spawn(async move {
            let tcp = match tokio::net::TcpStream::from_std(tcp) {
                Ok(tcp) => tcp,
                Err(e) => {
                    tracing::debug!(error = %e, "Could not register a connection with its I/O thread.");
                    return;
                }
            };
            let mut builder = Builder::new(TokioExecutor::new());
            builder.http2().enable_connect_protocol();
            let connection = builder
                .serve_connection_with_upgrades(TokioIo::new(tcp), TowerToHyperService::new(service));
            if let Err(e) = watcher.watch(connection.into_owned()).await {
                tracing::trace!(error = %e, "Connection ended with an error.");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Accept errors other than a peer's reset are the process's (out of file descriptors):
/// wait for connections to close rather than spin.
async fn accept_failed(e: io::Error) {
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "Could not accept a connection; retrying in 1 s.");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    fn router() -> Router {
        Router::new()
            .route(
                "/thread",
                get(|| async { std::thread::current().name().unwrap_or_default().to_owned() }),
            )
            .route(
                "/peer",
                get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
            )
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    "done"
                }),
            )
    }

    /// One HTTP/1.1 request on a kept-alive connection; returns the body.
    async fn request(tcp: &mut TcpStream, path: &str) -> String {
        let head = format!("GET {path} HTTP/1.1\r\nhost: test\r\n\r\n");
        tcp.write_all(head.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        loop {
            let mut chunk = [0u8; 1024];
            let n = tcp.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed before the response was complete");
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).to_string();
            let Some(end) = text.find("\r\n\r\n") else {
                continue;
            };
            let length: usize = text[..end]
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .expect("a content-length header")
                .parse()
                .unwrap();
            if buf.len() >= end + 4 + length {
                assert!(text.starts_with("HTTP/1.1 200"), "{text}");
                return text[end + 4..end + 4 + length].to_owned();
            }
        }
    }

    async fn start() -> (
        SocketAddr,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<io::Result<()>>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(async move {
            let threads = IoThreads::start(2, "test-io").unwrap();
            serve(listener, router(), &threads, async {
                let _ = stop_rx.await;
            })
            .await
        });
        (address, stop_tx, served)
    }

    #[tokio::test]
    async fn a_connection_stays_on_one_io_thread_and_the_next_goes_to_another() {
        let (address, _stop, _served) = start().await;
        let mut first = TcpStream::connect(address).await.unwrap();
        let mut second = TcpStream::connect(address).await.unwrap();
        let a = request(&mut first, "/thread").await;
        assert!(a.starts_with("test-io-"), "{a}");
        for _ in 0..5 {
            assert_eq!(request(&mut first, "/thread").await, a);
        }
        let b = request(&mut second, "/thread").await;
        assert!(b.starts_with("test-io-"), "{b}");
        assert_ne!(a, b, "round robin over two threads");
    }

    #[tokio::test]
    async fn handlers_see_the_peer_address() {
        let (address, _stop, _served) = start().await;
        let mut tcp = TcpStream::connect(address).await.unwrap();
        let local = tcp.local_addr().unwrap();
        assert_eq!(request(&mut tcp, "/peer").await, local.to_string());
    }

    #[tokio::test]
    async fn shutdown_finishes_the_request_in_flight_then_stops_accepting() {
        let (address, stop, served) = start().await;
        let mut tcp = TcpStream::connect(address).await.unwrap();
        let slow = tokio::spawn(async move { request(&mut tcp, "/slow").await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.send(()).unwrap();
        assert_eq!(slow.await.unwrap(), "done");
        served.await.unwrap().unwrap();
        assert!(
            TcpStream::connect(address).await.is_err(),
            "the listener is closed once serve returns"
        );
    }
}
