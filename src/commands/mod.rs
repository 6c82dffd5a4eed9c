//! One module per CLI subcommand.
pub mod bench;
pub mod generate;
pub mod models;
pub mod print_openapi;
pub mod pull;
pub mod serve;
