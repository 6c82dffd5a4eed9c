//! One module per CLI subcommand.
pub mod generate;
pub mod models;
