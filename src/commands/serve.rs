//! `imago serve`: the command line to a `ServerConfig`, then the server.
use std::net::SocketAddr;

use anyhow::{Context, Result};

use crate::api::connections::ConnectionLimits;
use crate::cli::ServeArgs;
use crate::config::{self, ApiKey, KeyLimits, Limits, ServerConfig};
use crate::imaging::ReferenceLimits;

pub fn run(args: ServeArgs) -> Result<()> {
    let hub = crate::hub::HubConfig::from_env(args.offline);
    let config = server_config(args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        // Hub repos missing from the cache are downloaded before loading (or fail fast offline).
        for model in &config.models {
            crate::hub::ensure_available(&hub, &model.source)
                .await
                .with_context(|| format!("cannot load model {}", model.id))?;
        }
        crate::server::run(config).await
    })
}

pub fn server_config(args: ServeArgs) -> Result<ServerConfig> {
    let models = if args.models.is_empty() {
        config::default_models()
    } else {
        args.models
            .iter()
            .map(|m| config::parse_model_arg(m))
            .collect::<Result<Vec<_>>>()?
    };
    config::check_unique_ids(&models)?;
    let mut keys: Vec<ApiKey> = args
        .api_keys
        .into_iter()
        .enumerate()
        .map(|(i, secret)| ApiKey {
            name: format!("key-{i}"),
            secret,
            models: None,
            limits: KeyLimits::default(),
        })
        .collect();
    if let Some(path) = &args.api_keys_file {
        keys.extend(config::read_keys_file(path)?);
    }
    let upstreams = match &args.providers_file {
        Some(path) => config::read_providers_file(path)?,
        None => Vec::new(),
    };
    Ok(ServerConfig {
        upstreams,
        addr: SocketAddr::new(args.host, args.port),
        models,
        keys,
        device: args.device,
        dtype: args.dtype,
        max_queue: args.max_queue,
        public_metrics: args.public_metrics,
        low_memory: args.low_memory,
        playground: !args.no_playground,
        scheduling: crate::engine::Scheduling {
            max_batch: args.max_batch as usize,
            request_timeout: std::time::Duration::from_secs(args.request_timeout),
            max_pixels: args.max_pixels,
        },
        preview_decoders: args
            .preview_decoders
            .iter()
            .map(|d| config::parse_preview_decoder_arg(d))
            .collect::<Result<Vec<_>>>()?,
        limits: Limits {
            max_body_bytes: args.max_body_bytes,
            reference: ReferenceLimits {
                allow_private: args.allow_private_urls,
                max_bytes: args.max_reference_bytes,
                max_pixels: args.max_reference_pixels,
                ..ReferenceLimits::default()
            },
            max_pixels_per_request: args.max_pixels_per_request,
            idle_timeout: args.idle_timeout,
        },
        connections: ConnectionLimits {
            header_timeout: args.header_timeout,
            idle_timeout: args.idle_timeout,
            shutdown_grace: std::time::Duration::from_secs(args.shutdown_grace),
        },
    })
}
