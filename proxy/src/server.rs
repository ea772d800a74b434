//! The accept loops: plain HTTP and (optionally) TLS, HTTP/1.1 and HTTP/2, until shutdown; then
//! open connections drain for a while. With `--metrics-listen`, a third listener serves the
//! operability routes only, until the very end of shutdown.
//!
//! Shutdown (SIGTERM, ctrl-c): `/readyz` turns 503, the main listeners close (new connections are
//! refused), background scheduling stops; in-flight requests (pushes included) and running syncs
//! get `--shutdown-timeout` to finish; what still runs then is interrupted; the store is flushed.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::app::App;

/// How long a client may take for the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serve `listener` (plain HTTP) and, if given, `tls` (and `metrics`: the operability routes)
/// until `shutdown` resolves; then stop accepting, let open requests and syncs finish within
/// `--shutdown-timeout`, and signal what still runs to stop.
pub async fn serve(
    listener: TcpListener,
    tls: Option<(TcpListener, Arc<rustls::ServerConfig>)>,
    metrics: Option<TcpListener>,
    app: Arc<App>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let ops = metrics.map(|l| tokio::spawn(serve_ops(l, app.clone())));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(app.sync.clone().schedule(stop_rx.clone()));
    let webhooks = tokio::spawn(app.webhooks.clone().run(stop_rx.clone()));
    if let Some(interval) = app.config.maintain.interval {
        tokio::spawn(crate::maintain::run(app.clone(), interval, stop_rx.clone()));
    }
    if let Some(ttl) = app.config.ephemeral_ttl {
        tokio::spawn(crate::expiry::run(app.clone(), ttl, stop_rx));
    }
    let graceful = GracefulShutdown::new();
    let (tls_listener, acceptor) = match tls {
        Some((l, config)) => (Some(l), Some(TlsAcceptor::from(config))),
        None => (None, None),
    };
    tokio::pin!(shutdown);
    let slots = app.throttle.connections.clone();
    loop {
        // Take a connection slot before accepting: while all are in use, new connections
        // wait in the listen backlog (queue) rather than being refused.
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    serve_connection(&app, graceful.watcher(), TokioIo::new(stream), permit);
                }
                Err(e) => accept_failed(e).await,
            },
            accepted = accept_opt(tls_listener.as_ref()) => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    let (app, watcher) = (app.clone(), graceful.watcher());
                    let Some(acceptor) = acceptor.clone() else { continue };
                    tokio::spawn(async move {
                        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                            Ok(Ok(tls)) => serve_connection(&app, watcher, TokioIo::new(tls), permit),
                            Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                            Err(_) => tracing::debug!("TLS handshake timed out"),
                        }
                    });
                }
                Err(e) => accept_failed(e).await,
            },
            () = &mut shutdown => break,
        }
    }
    crate::metrics::global().set_shutting_down();
    // Stop accepting: new connections are refused from here on.
    drop(listener);
    drop(tls_listener);
    let _ = stop_tx.send(true);
    let deadline = app.config.shutdown_timeout;
    tracing::info!(
        deadline_s = deadline.as_secs(),
        syncs = app.sync.running(),
        "shutting down: finishing in-flight requests and syncs"
    );
    let started = std::time::Instant::now();
    let drained = tokio::time::timeout(deadline, async {
        tokio::join!(graceful.shutdown(), app.sync.wait_idle());
    })
    .await;
    match drained {
        Ok(()) => tracing::info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "in-flight work finished"
        ),
        Err(_) => tracing::warn!(
            deadline_s = deadline.as_secs(),
            syncs = app.sync.running(),
            "work still running at the shutdown deadline; interrupting it"
        ),
    }
    app.interrupt.store(true, Ordering::Relaxed);
    let _ = webhooks.await;
    let store = app.store.clone();
    let _ = tokio::task::spawn_blocking(move || store.wait_idle()).await;
    app.store.index().flush().map_err(std::io::Error::other)?;
    if let Some(ops) = ops {
        ops.abort();
    }
    tracing::info!("shut down");
    Ok(())
}

/// The `--metrics-listen` accept loop: `/metrics`, `/healthz`, `/readyz`; runs until aborted.
async fn serve_ops(listener: TcpListener, app: Arc<App>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                accept_failed(e).await;
                continue;
            }
        };
        let app = app.clone();
        let service = service_fn(move |req| {
            let app = app.clone();
            async move { Ok::<_, Infallible>(crate::http::handle_ops(app, req).await) }
        });
        tokio::spawn(async move {
            let conn = Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .into_owned();
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "metrics connection ended with an error");
            }
        });
    }
}

async fn accept_opt(
    listener: Option<&TcpListener>,
) -> std::io::Result<(tokio::net::TcpStream, std::net::SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

async fn accept_failed(e: std::io::Error) {
    tracing::warn!(error = %e, "accept failed");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

fn serve_connection<I>(
    app: &Arc<App>,
    watcher: Watcher,
    io: TokioIo<I>,
    permit: tokio::sync::OwnedSemaphorePermit,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let limits = app.throttle.limits;
    let app = app.clone();
    let service = service_fn(move |req| {
        let app = app.clone();
        async move { Ok::<_, Infallible>(crate::http::handle(app, req).await) }
    });
    let conn = connection_builder(&limits)
        .serve_connection(io, service)
        .into_owned();
    let conn = watcher.watch(conn);
    tokio::spawn(async move {
        let _permit = permit;
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "connection ended with an error");
        }
    });
}

/// The HTTP/1 and HTTP/2 settings from the limits: request-head size (431 beyond it) and the
/// header-read timeout, which also closes idle keep-alive connections.
fn connection_builder(limits: &crate::limits::ServerLimits) -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // hyper's floor for its read buffer is 8 KiB.
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    builder
}
