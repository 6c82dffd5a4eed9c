//! Checks against the official tiny FLUX fixture: `tests/fixtures/extra/flux-single-file/model`
//! holds its transformer and VAE converted to BFL files (verified with diffusers' own
//! `from_single_file`, see that folder's README), and every tensor served from them must equal the
//! diffusers-layout original bit for bit.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::safetensors::{load, save};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::*;
use crate::loader::mmap_var_builder;
use crate::vae::{AutoencoderKL, VaeConfig};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}
fn diffusers_model() -> PathBuf {
    fixtures().join("parity/flux-schnell-4step/model")
}
fn bfl_model() -> PathBuf {
    fixtures().join("extra/flux-single-file/model")
}
fn bfl_transformer() -> PathBuf {
    bfl_model().join("flux1-schnell.safetensors")
}
fn bfl_ae() -> PathBuf {
    bfl_model().join("ae.safetensors")
}
fn diffusers_weights(component: &str) -> HashMap<String, Tensor> {
    let path = diffusers_model()
        .join(component)
        .join("diffusion_pytorch_model.safetensors");
    load(path, &Device::Cpu).unwrap()
}
fn config_json(component: &str) -> serde_json::Value {
    let path = diffusers_model().join(component).join("config.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn bits(t: &Tensor) -> Vec<u32> {
    let values = t.to_dtype(DType::F32).unwrap().flatten_all().unwrap();
    values
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

/// Fetches every diffusers tensor through `vb` (in `dtype`) and compares it exactly.
fn assert_serves_exactly(vb: &VarBuilder, want: &HashMap<String, Tensor>, dtype: DType) {
    assert!(!want.is_empty());
    for (name, expected) in want {
        assert!(vb.contains_tensor(name), "{name} not served");
        let got = vb.get(expected.dims(), name).unwrap();
        assert_eq!(got.dtype(), dtype, "{name}");
        let expected = expected.to_dtype(dtype).unwrap();
        assert_eq!(bits(&got), bits(&expected), "{name} differs");
    }
}

#[test]
fn transformer_serves_every_diffusers_tensor_exactly() {
    let want = diffusers_weights("transformer");
    assert_eq!(want.len(), 76);
    for dtype in [DType::F16, DType::F32] {
        let vb = bfl_transformer_var_builder(&bfl_transformer(), dtype, &Device::Cpu).unwrap();
        assert_serves_exactly(&vb, &want, dtype);
    }
}

#[test]
fn autoencoder_serves_every_diffusers_tensor_exactly() {
    let want = diffusers_weights("vae");
    assert_eq!(want.len(), 176);
    for dtype in [DType::F16, DType::F32] {
        let vb = bfl_autoencoder_var_builder(&bfl_ae(), dtype, &Device::Cpu).unwrap();
        assert_serves_exactly(&vb, &want, dtype);
    }
}

#[test]
fn transformer_shapes_match_the_fixture_config() {
    let config = config_json("transformer");
    let n = |key: &str| config[key].as_u64().unwrap() as usize;
    let shapes = bfl_transformer_shapes(&bfl_transformer()).unwrap();
    let heads = n("num_attention_heads");
    let head_dim = n("attention_head_dim");
    assert_eq!(
        shapes,
        BflTransformerShapes {
            num_layers: n("num_layers"),
            num_single_layers: n("num_single_layers"),
            hidden_size: heads * head_dim,
            head_dim,
            in_channels: n("in_channels"),
            // `out_channels: null` means in_channels in diffusers.
            out_channels: config["out_channels"]
                .as_u64()
                .map_or(n("in_channels"), |v| v as usize),
            joint_attention_dim: n("joint_attention_dim"),
            pooled_projection_dim: n("pooled_projection_dim"),
            guidance_embeds: config["guidance_embeds"].as_bool().unwrap(),
        }
    );
    assert_eq!(shapes.num_attention_heads(), heads);
}

#[test]
fn autoencoder_config_matches_the_fixture_config() {
    let path = diffusers_model().join("vae/config.json");
    let want = VaeConfig::from_json(&std::fs::read_to_string(path).unwrap()).unwrap();
    let got = bfl_autoencoder_config(&bfl_ae()).unwrap();
    assert_eq!(got.in_channels, want.in_channels);
    assert_eq!(got.out_channels, want.out_channels);
    assert_eq!(got.down_block_types, want.down_block_types);
    assert_eq!(got.up_block_types, want.up_block_types);
    assert_eq!(got.block_out_channels, want.block_out_channels);
    assert_eq!(got.layers_per_block, want.layers_per_block);
    assert_eq!(got.act_fn, want.act_fn);
    assert_eq!(got.latent_channels, want.latent_channels);
    assert_eq!(got.norm_num_groups, want.norm_num_groups);
    assert_eq!(got.scaling_factor, want.scaling_factor);
    assert_eq!(got.shift_factor, want.shift_factor);
    assert_eq!(got.latents_mean, want.latents_mean);
    assert_eq!(got.latents_std, want.latents_std);
    assert_eq!(got.force_upcast, want.force_upcast);
    assert_eq!(got.use_quant_conv, want.use_quant_conv);
    assert_eq!(got.use_post_quant_conv, want.use_post_quant_conv);
    assert_eq!(got.mid_block_add_attention, want.mid_block_add_attention);
    // The fixture's 64 is a tiny model's; the FLUX.1 repos say 1024.
    assert_eq!(
        got.sample_size.and_then(|v| v.as_u64()),
        Some(FLUX_AE_SAMPLE_SIZE as u64)
    );
}

#[test]
fn vae_built_from_ae_file_decodes_as_the_diffusers_one() {
    let device = Device::Cpu;
    let config = bfl_autoencoder_config(&bfl_ae()).unwrap();
    let bfl = AutoencoderKL::new(
        bfl_autoencoder_var_builder(&bfl_ae(), DType::F32, &device).unwrap(),
        &config,
    )
    .unwrap();
    let files = [diffusers_model().join("vae/diffusion_pytorch_model.safetensors")];
    let reference = AutoencoderKL::new(
        mmap_var_builder(&files, DType::F32, &device).unwrap(),
        &config,
    )
    .unwrap();
    let latents = Tensor::arange(0f32, 256.0, &device)
        .and_then(|t| t.affine(1.0 / 128.0, -1.0))
        .and_then(|t| t.reshape((1, 16, 4, 4)))
        .unwrap();
    let got = bfl.decode(&latents).unwrap();
    assert_eq!(got.dims(), [1, 3, 32, 32]);
    assert_eq!(bits(&got), bits(&reference.decode(&latents).unwrap()));
}

#[test]
fn finds_the_fixture_files_and_nothing_in_a_diffusers_folder() {
    let found = find_flux_single_files(&bfl_model()).unwrap().unwrap();
    assert_eq!(
        found,
        FluxSingleFiles {
            transformer: bfl_transformer(),
            autoencoder: Some(bfl_ae()),
        }
    );
    assert_eq!(find_flux_single_files(&diffusers_model()).unwrap(), None);
}

/// Writes the BFL transformer's tensors renamed by `rename` (dropped where it gives `None`).
fn write_transformer_copy(path: &Path, rename: impl Fn(&str) -> Option<String>) {
    let tensors: HashMap<String, Tensor> = load(bfl_transformer(), &Device::Cpu)
        .unwrap()
        .into_iter()
        .filter_map(|(name, t)| Some((rename(&name)?, t)))
        .collect();
    save(&tensors, path).unwrap();
}

#[test]
fn comfyui_prefixed_transformer_is_found_and_served() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flux1-schnell-comfy.safetensors");
    write_transformer_copy(&path, |n| Some(format!("model.diffusion_model.{n}")));
    let found = find_flux_single_files(dir.path()).unwrap().unwrap();
    assert_eq!(found.transformer, path);
    assert_eq!(found.autoencoder, None);
    let vb = bfl_transformer_var_builder(&path, DType::F16, &Device::Cpu).unwrap();
    assert_serves_exactly(&vb, &diffusers_weights("transformer"), DType::F16);
    assert_eq!(
        bfl_transformer_shapes(&path).unwrap(),
        bfl_transformer_shapes(&bfl_transformer()).unwrap()
    );
}

#[test]
fn guidance_embedder_is_detected_and_served() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flux1-dev.safetensors");
    let mut tensors = load(bfl_transformer(), &Device::Cpu).unwrap();
    for param in [
        "in_layer.weight",
        "in_layer.bias",
        "out_layer.weight",
        "out_layer.bias",
    ] {
        let t = (tensors[&format!("time_in.{param}")].clone() * 2.0).unwrap();
        tensors.insert(format!("guidance_in.{param}"), t);
    }
    save(&tensors, &path).unwrap();
    assert!(bfl_transformer_shapes(&path).unwrap().guidance_embeds);
    assert!(
        !bfl_transformer_shapes(&bfl_transformer())
            .unwrap()
            .guidance_embeds
    );
    let vb = bfl_transformer_var_builder(&path, DType::F32, &Device::Cpu).unwrap();
    let got = vb
        .get(
            (32, 256),
            "time_text_embed.guidance_embedder.linear_1.weight",
        )
        .unwrap();
    let timestep = vb
        .get(
            (32, 256),
            "time_text_embed.timestep_embedder.linear_1.weight",
        )
        .unwrap();
    assert_eq!(bits(&got), bits(&(timestep * 2.0).unwrap()));
}

#[test]
fn two_transformer_files_are_ambiguous() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("flux1-schnell.safetensors");
    let comfy = dir.path().join("schnell-comfy.safetensors");
    write_transformer_copy(&plain, |n| Some(n.to_string()));
    write_transformer_copy(&comfy, |n| Some(format!("model.diffusion_model.{n}")));
    let err = find_flux_single_files(dir.path()).unwrap_err().to_string();
    assert!(err.contains("ambiguous"), "{err}");
    assert!(err.contains(&plain.display().to_string()), "{err}");
    assert!(err.contains(&comfy.display().to_string()), "{err}");
}

#[test]
fn a_file_without_flux_keys_is_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    // A diffusers-layout transformer under a BFL name: no `double_blocks.*`.
    let path = dir.path().join("flux1-dev.safetensors");
    let diffusers = diffusers_model().join("transformer/diffusion_pytorch_model.safetensors");
    std::fs::copy(diffusers, &path).unwrap();
    let shown = path.display().to_string();
    let errors = [
        bfl_transformer_var_builder(&path, DType::F32, &Device::Cpu)
            .err()
            .unwrap()
            .to_string(),
        bfl_transformer_shapes(&path).unwrap_err().to_string(),
        find_flux_single_files(dir.path()).unwrap_err().to_string(),
    ];
    for err in errors {
        assert!(err.contains(&shown), "{err}");
        assert!(err.contains("double_blocks.0.img_attn.qkv.weight"), "{err}");
    }
    let ae_err = bfl_autoencoder_config(&path).unwrap_err().to_string();
    assert!(ae_err.contains(&shown), "{ae_err}");
}

#[test]
fn a_missing_or_unknown_tensor_names_both_layouts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flux1-schnell.safetensors");
    write_transformer_copy(&path, |n| (n != "txt_in.bias").then(|| n.to_string()));
    let vb = bfl_transformer_var_builder(&path, DType::F32, &Device::Cpu).unwrap();
    assert!(!vb.contains_tensor("context_embedder.bias"));
    let err = vb.get(32, "context_embedder.bias").unwrap_err().to_string();
    assert!(err.contains("context_embedder.bias"), "{err}");
    assert!(err.contains("txt_in.bias"), "{err}");
    assert!(err.contains(&path.display().to_string()), "{err}");
    let err = vb
        .get(32, "transformer_blocks.0.attn.bogus.weight")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("transformer_blocks.0.attn.bogus.weight"),
        "{err}"
    );
    assert!(!vb.contains_tensor("transformer_blocks.0.attn.bogus.weight"));
    // A wrong requested shape is reported with the diffusers name.
    let err = vb
        .get((16, 32), "x_embedder.weight")
        .unwrap_err()
        .to_string();
    assert!(err.contains("x_embedder.weight"), "{err}");
}
