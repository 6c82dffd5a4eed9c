//! `imago print-openapi`: the OpenAPI document, generated from the wire types.
use anyhow::Result;

pub fn run() -> Result<()> {
    println!("{}", crate::api::openapi::document_json());
    Ok(())
}
