//! `imago serve`: the command line to a `ServerConfig`, then the server.
use std::net::SocketAddr;

use anyhow::Result;

use crate::cli::ServeArgs;
use crate::config::{self, ApiKey, Limits, ServerConfig};
use crate::imaging::ReferenceLimits;

pub fn run(args: ServeArgs) -> Result<()> {
    let config = server_config(args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(crate::server::run(config))
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
        preview_decoders: args
            .preview_decoders
            .iter()
            .map(|d| config::parse_preview_decoder_arg(d))
            .collect::<Result<Vec<_>>>()?,
        limits: Limits {
            max_body_bytes: args.max_body_bytes,
            reference: ReferenceLimits {
                allow_private: args.allow_private_urls,
                ..ReferenceLimits::default()
            },
        },
    })
}
