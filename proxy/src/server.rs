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
use hyper_util::rt::{TokioExecutor, TokioIo};
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
    if let Some(ttl) = app.config.ephemeral_ttl {
        tokio::spawn(crate::expiry::run(app.clone(), ttl, stop_rx));
    }
    let graceful = GracefulShutdown::new();
    let (tls_listener, acceptor) = match tls {
        Some((l, config)) => (Some(l), Some(TlsAcceptor::from(config))),
        None => (None, None),
    };
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    serve_connection(&app, graceful.watcher(), TokioIo::new(stream));
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
                            Ok(Ok(tls)) => serve_connection(&app, watcher, TokioIo::new(tls)),
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

fn serve_connection<I>(app: &Arc<App>, watcher: Watcher, io: TokioIo<I>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let app = app.clone();
    let service = service_fn(move |req| {
        let app = app.clone();
        async move { Ok::<_, Infallible>(crate::http::handle(app, req).await) }
    });
    let conn = Builder::new(TokioExecutor::new())
        .serve_connection(io, service)
        .into_owned();
    let conn = watcher.watch(conn);
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "connection ended with an error");
        }
    });
}
