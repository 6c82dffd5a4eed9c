//! imago: a self-hosted image-generation server and CLI on the `imago-models` engine.
pub mod api;
pub mod cli;
pub mod commands;
pub mod domain;
pub mod output;
