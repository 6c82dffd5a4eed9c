//! Finding and loading model files: diffusers pipeline folders, the Hugging Face cache, and the
//! model sources a user may name (a folder, a Hub repo id, or a built-in tiny model).
mod folder;
mod hf_cache;
mod json_file;
mod single_file;
mod source;
mod weights;

pub use folder::{Component, ModelFolder};
pub use hf_cache::{cached_snapshot, hf_home, hub_cache_dir, is_valid_repo_id};
pub use json_file::{read_config_text, read_json};
pub use single_file::{
    bfl_autoencoder_config, bfl_autoencoder_var_builder, bfl_transformer_shapes,
    bfl_transformer_var_builder, find_flux_single_files, BflTransformerShapes, FluxSingleFiles,
    FLUX_AE_SAMPLE_SIZE, FLUX_AE_SCALING_FACTOR, FLUX_AE_SHIFT_FACTOR,
};
pub use source::{BuiltInModel, ModelSource};
pub use weights::{find_weight_files, mmap_var_builder, validate_safetensors};
