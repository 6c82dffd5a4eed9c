//! Where a FLUX model's transformer and autoencoder weights come from: the diffusers folders
//! (`transformer/`, `vae/`), or Black Forest Labs' single files at the model root
//! (`flux1-*.safetensors`, `ae.safetensors`), whose tensor names are mapped to diffusers'.
use std::path::PathBuf;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use super::components::ComponentStore;
use crate::error::{ModelError, Result};
use crate::flux::FluxTransformerConfig;
use crate::loader::{
    bfl_autoencoder_config, bfl_autoencoder_var_builder, bfl_transformer_shapes,
    bfl_transformer_var_builder, find_flux_single_files, read_json, BflTransformerShapes,
    ModelFolder,
};
use crate::vae::VaeConfig;

/// Black Forest Labs' rotary axes for FLUX.1 (head_dim 128 = 16 + 56 + 56); a single file does not
/// record them, so other head sizes need `transformer/config.json`.
const FLUX1_AXES_DIMS_ROPE: [usize; 3] = [16, 56, 56];
const FLUX1_HEAD_DIM: usize = 128;

/// Whether a diffusers component folder holds weights (not only a config).
fn has_diffusers_weights(folder: &ModelFolder, component: &str) -> bool {
    folder.has_component(component)
        && folder
            .component(component)
            .and_then(|c| c.weight_files())
            .is_ok()
}

/// The component's own config.json when the folder has one.
fn optional_config<T: serde::de::DeserializeOwned>(
    folder: &ModelFolder,
    component: &str,
) -> Result<Option<T>> {
    let path = folder.root().join(component).join("config.json");
    if !path.is_file() {
        return Ok(None);
    }
    read_json(&path, "component config").map(Some)
}

/// The transformer's config and weights.
pub(super) fn load_transformer(
    store: &ComponentStore,
    dtype: DType,
    device: &Device,
) -> Result<(FluxTransformerConfig, VarBuilder<'static>)> {
    let folder = match store {
        ComponentStore::BuiltIn(_) => {
            let config: FluxTransformerConfig = store.config("transformer")?;
            return Ok((config, store.var_builder("transformer", dtype, device)?));
        }
        ComponentStore::Folder(folder) => folder,
    };
    if has_diffusers_weights(folder, "transformer") {
        let config: FluxTransformerConfig = store.config("transformer")?;
        return Ok((config, store.var_builder("transformer", dtype, device)?));
    }
    let Some(files) = find_flux_single_files(folder.root())? else {
        return Err(ModelError::MissingFile {
            what: "FLUX transformer weights (transformer/diffusion_pytorch_model*.safetensors, or \
                   Black Forest Labs' flux1-*.safetensors at the model root)"
                .into(),
            path: folder.root().join("transformer"),
        });
    };
    let config = match optional_config::<FluxTransformerConfig>(folder, "transformer")? {
        Some(config) => config,
        None => config_from_shapes(
            &bfl_transformer_shapes(&files.transformer)?,
            &files.transformer,
        )?,
    };
    tracing::info!(file = %files.transformer.display(), "loading the FLUX transformer from a single file");
    Ok((
        config,
        bfl_transformer_var_builder(&files.transformer, dtype, device)?,
    ))
}

/// A transformer config for a single file without `transformer/config.json`.
fn config_from_shapes(
    shapes: &BflTransformerShapes,
    path: &std::path::Path,
) -> Result<FluxTransformerConfig> {
    if shapes.head_dim != FLUX1_HEAD_DIM {
        return Err(ModelError::Unsupported(format!(
            "{}: attention head size {} is not FLUX.1's {FLUX1_HEAD_DIM}, so its rotary axes are \
             unknown; put the transformer's config.json (with axes_dims_rope) in transformer/",
            path.display(),
            shapes.head_dim
        )));
    }
    Ok(FluxTransformerConfig {
        patch_size: 1,
        in_channels: shapes.in_channels,
        out_channels: Some(shapes.out_channels),
        num_layers: shapes.num_layers,
        num_single_layers: shapes.num_single_layers,
        attention_head_dim: shapes.head_dim,
        num_attention_heads: shapes.hidden_size / shapes.head_dim,
        joint_attention_dim: shapes.joint_attention_dim,
        pooled_projection_dim: shapes.pooled_projection_dim,
        guidance_embeds: shapes.guidance_embeds,
        axes_dims_rope: FLUX1_AXES_DIMS_ROPE.to_vec(),
    })
}

/// Where the autoencoder's weights are.
pub(super) enum VaeWeights {
    Store,
    SingleFile(PathBuf),
}

impl VaeWeights {
    pub(super) fn var_builder(
        &self,
        store: &ComponentStore,
        dtype: DType,
        device: &Device,
    ) -> Result<VarBuilder<'static>> {
        match self {
            Self::Store => store.var_builder("vae", dtype, device),
            Self::SingleFile(path) => bfl_autoencoder_var_builder(path, dtype, device),
        }
    }
}

/// The autoencoder's config and where its weights are.
pub(super) fn load_vae(store: &ComponentStore) -> Result<(VaeConfig, VaeWeights)> {
    let folder = match store {
        ComponentStore::BuiltIn(_) => return Ok((store.config("vae")?, VaeWeights::Store)),
        ComponentStore::Folder(folder) => folder,
    };
    if has_diffusers_weights(folder, "vae") {
        return Ok((store.config("vae")?, VaeWeights::Store));
    }
    let autoencoder = find_flux_single_files(folder.root())?.and_then(|f| f.autoencoder);
    let Some(path) = autoencoder else {
        return Err(ModelError::MissingFile {
            what: "FLUX autoencoder weights (vae/diffusion_pytorch_model*.safetensors, or Black \
                   Forest Labs' ae.safetensors at the model root)"
                .into(),
            path: folder.root().join("vae"),
        });
    };
    let config = match optional_config::<VaeConfig>(folder, "vae")? {
        Some(config) => config,
        None => bfl_autoencoder_config(&path)?,
    };
    Ok((config, VaeWeights::SingleFile(path)))
}
