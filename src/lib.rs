//! imago: a self-hosted image-generation server and CLI on the `imago-models` engine.
//! The library exposes [`build_app`] (the router, for tests and embedding) and [`run`] (the server).
pub mod api;
pub mod cli;
pub mod commands;
pub mod config;
pub mod domain;
pub mod engine;
pub mod error;
pub mod hub;
pub mod imaging;
pub mod metrics;
pub mod output;
pub mod providers;
pub mod server;

pub use api::build_app;
pub use server::run;
