//! `imago serve`: load the models, bind, serve until Ctrl-C/SIGTERM, then drain.
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::net::TcpListener;

use crate::api::auth::Auth;
use crate::api::shutdown::Shutdown;
use crate::api::{build_app, AppInner, AppState};
use crate::config::ServerConfig;
use crate::engine::{Engine, EngineConfig};
use crate::metrics::Metrics;
use crate::providers::{LocalProvider, Provider, Registry, ServedModel, Upstream};
use imago_models::pipeline::LoadOptions;

/// Runs the server with `config` until a shutdown signal.
pub async fn run(config: ServerConfig) -> Result<()> {
    let engine_config = EngineConfig {
        device: config.device,
        dtype: config.dtype,
        max_queue: config.max_queue,
        preview_decoders: config.preview_decoders.clone(),
        load_options: LoadOptions {
            low_memory: config.low_memory,
        },
        scheduling: config.scheduling.clone(),
    };
    let metrics = Arc::new(Metrics::default());
    let (engine, caps) =
        Engine::start(engine_config, config.models.clone(), metrics.clone()).await?;
    let local = Provider::Local(LocalProvider::new(engine.clone()));
    let registry = Registry::new(
        caps.into_iter()
            .map(|caps| ServedModel {
                caps,
                provider: local.clone(),
            })
            .collect(),
    )
    .with_upstreams(
        config
            .upstreams
            .iter()
            .cloned()
            .map(Upstream::new)
            .collect::<Result<Vec<_>>>()?,
    );
    for upstream in registry.upstreams() {
        tracing::info!(provider = upstream.slug(), models = ?upstream.config().models, "upstream provider");
    }
    let auth = Auth::new(config.keys.clone());
    if auth.is_open() {
        tracing::warn!(
            "no --api-key or --api-keys-file: the API is open to anyone who can reach {}",
            config.addr
        );
    }
    let shutdown = Shutdown::default();
    let state = AppState::new(AppInner {
        registry,
        metrics,
        public_metrics: config.public_metrics,
        auth,
        limits: config.limits.clone(),
        engine: engine.clone(),
        playground: config.playground,
        shutdown: shutdown.clone(),
    });
    let app = build_app(state);

    let listener = TcpListener::bind(config.addr)
        .await
        .with_context(|| format!("cannot listen on {}", config.addr))?;
    let addr = listener.local_addr()?;
    // Tests and scripts read this line to find the port when --port 0 is used.
    println!("listening on http://{addr}");
    tracing::info!(%addr, models = ?config.models.iter().map(|m| &m.id).collect::<Vec<_>>(), "imago serving");
    // On the signal the accept loop stops taking connections and lets accepted requests finish;
    // past the grace period it ends open streams, and the engine cancels what still runs, so
    // the remaining requests end (with an error) and the drain completes.
    let (signalled_tx, signalled_rx) = tokio::sync::oneshot::channel::<()>();
    let grace = config.connections.shutdown_grace;
    let serve =
        crate::api::connections::serve(listener, app, config.connections, shutdown, async move {
            shutdown_signal().await;
            tracing::info!("shutdown signal: no new connections; finishing accepted requests");
            let _ = signalled_tx.send(());
        });
    let grace_over = async move {
        if signalled_rx.await.is_ok() {
            tokio::time::sleep(grace).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    let mut serve = std::pin::pin!(serve);
    tokio::select! {
        () = &mut serve => {}
        () = grace_over => {
            tracing::warn!(grace_s = grace.as_secs_f64(), "shutdown grace period over: cancelling running jobs");
            engine.abort();
            serve.await;
        }
    }
    tracing::info!("shutting down: waiting for the engine thread");
    engine.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sig) => {
                sig.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}
