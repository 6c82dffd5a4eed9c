//! The tiny autoencoder (diffusers' `AutoencoderTiny`) against diffusers 0.42.1 on the parity
//! fixtures taesd-decode (4 latent channels) and taef1-decode (16): `decoded` =
//! decode(`latents`), `encoded` = encode(`decoded`), f16 weights computed in f32.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use imago_models::taesd::{TinyAutoencoder, TinyAutoencoderConfig};
use imago_models::ModelError;

const CASES: [(&str, usize); 2] = [("taesd-decode", 4), ("taef1-decode", 16)];

fn fixture(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/parity")
        .join(case)
}

fn expected(case: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(case).join("expected.safetensors"), &Device::Cpu)
        .expect("expected.safetensors")
}

/// The case's tolerance from its case.json.
fn atol(case: &str) -> f32 {
    let text = std::fs::read_to_string(fixture(case).join("case.json")).expect("case.json");
    let json: serde_json::Value = serde_json::from_str(&text).expect("case.json parses");
    json["atol"].as_f64().expect("atol") as f32
}

fn load(case: &str) -> TinyAutoencoder {
    TinyAutoencoder::load(&fixture(case).join("model"), DType::F32, &Device::Cpu).expect("load")
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .and_then(|d| d.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>())
        .expect("diff")
}

#[test]
fn decode_and_encode_match_diffusers() {
    for (case, channels) in CASES {
        let model = load(case);
        assert_eq!(model.latent_channels(), channels, "{case}");
        let data = expected(case);
        let tol = atol(case);

        let decoded = model.decode(&data["latents"]).expect("decode");
        let diff = max_abs_diff(&decoded, &data["decoded"]);
        println!("{case}: decode max |diff| = {diff:e}");
        assert!(diff <= tol, "{case}: decode differs by {diff}");

        let encoded = model.encode(&data["decoded"]).expect("encode");
        let diff = max_abs_diff(&encoded, &data["encoded"]);
        println!("{case}: encode max |diff| = {diff:e}");
        assert!(diff <= tol, "{case}: encode differs by {diff}");
    }
}

#[test]
fn batch_rows_equal_single_runs() {
    for (case, _) in CASES {
        let model = load(case);
        let data = expected(case);
        let one = &data["latents"];
        let other = (one.flip(&[3]).expect("flip") * 0.5).expect("scale");
        let batch = Tensor::cat(&[one, &other], 0).expect("cat");

        let decoded = model.decode(&batch).expect("decode batch");
        for (row, single) in [one, &other].into_iter().enumerate() {
            let alone = model.decode(single).expect("decode single");
            let diff = max_abs_diff(&decoded.narrow(0, row, 1).expect("row"), &alone);
            assert!(diff <= 1e-5, "{case}: decode row {row} differs by {diff}");
        }

        let encoded = model.encode(&decoded).expect("encode batch");
        for row in 0..2 {
            let image = decoded.narrow(0, row, 1).expect("row");
            let alone = model.encode(&image).expect("encode single");
            let diff = max_abs_diff(&encoded.narrow(0, row, 1).expect("row"), &alone);
            assert!(diff <= 1e-5, "{case}: encode row {row} differs by {diff}");
        }
    }
}

#[test]
fn config_defaults_follow_diffusers() {
    let config = TinyAutoencoderConfig::from_json("{}").expect("empty config");
    assert_eq!(config.in_channels, 3);
    assert_eq!(config.out_channels, 3);
    assert_eq!(config.encoder_block_out_channels, vec![64; 4]);
    assert_eq!(config.decoder_block_out_channels, vec![64; 4]);
    assert_eq!(config.act_fn, "relu");
    assert_eq!(config.upsample_fn, "nearest");
    assert_eq!(config.latent_channels, 4);
    assert_eq!(config.upsampling_scaling_factor, 2);
    assert_eq!(config.num_encoder_blocks, vec![1, 3, 3, 3]);
    assert_eq!(config.num_decoder_blocks, vec![3, 3, 3, 1]);
    assert_eq!(config.latent_magnitude, 3.0);
    assert_eq!(config.latent_shift, 0.5);
    assert!(!config.force_upcast);
    assert_eq!(config.scaling_factor, 1.0);
    assert_eq!(config.shift_factor, 0.0);
    config.validate().expect("defaults are supported");
}

/// A copy of the taesd fixture folder whose config.json has `key` set to `value`.
fn folder_with(key: &str, value: serde_json::Value) -> tempfile::TempDir {
    let source = fixture("taesd-decode").join("model");
    let dir = tempfile::tempdir().expect("tempdir");
    let text = std::fs::read_to_string(source.join("config.json")).expect("config");
    let mut json: serde_json::Value = serde_json::from_str(&text).expect("config parses");
    json[key] = value;
    std::fs::write(dir.path().join("config.json"), json.to_string()).expect("write config");
    let weights = "diffusion_pytorch_model.safetensors";
    std::fs::copy(source.join(weights), dir.path().join(weights)).expect("copy weights");
    dir
}

fn unsupported_message(key: &str, value: serde_json::Value) -> String {
    let dir = folder_with(key, value);
    match TinyAutoencoder::load(dir.path(), DType::F32, &Device::Cpu) {
        Err(ModelError::Unsupported(message)) => message,
        Err(other) => panic!("{key}: expected Unsupported, got {other}"),
        Ok(_) => panic!("{key}: an unsupported value loaded"),
    }
}

#[test]
fn unsupported_config_values_are_named() {
    let message = unsupported_message("act_fn", "tanh".into());
    assert!(
        message.contains("act_fn") && message.contains("tanh"),
        "{message}"
    );
    let message = unsupported_message("upsample_fn", "bilinear".into());
    assert!(
        message.contains("upsample_fn") && message.contains("bilinear"),
        "{message}"
    );
    let message = unsupported_message("num_decoder_blocks", serde_json::json!([3, 3, 1]));
    assert!(message.contains("num_decoder_blocks"), "{message}");
}

#[test]
fn missing_weights_are_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = fixture("taesd-decode").join("model/config.json");
    std::fs::copy(config, dir.path().join("config.json")).expect("copy config");
    let err = TinyAutoencoder::load(dir.path(), DType::F32, &Device::Cpu).err();
    assert!(
        matches!(err, Some(ModelError::MissingFile { .. })),
        "{err:?}"
    );
}

/// Not a benchmark: the time this (debug or release) test build takes to decode a 64x64 latent
/// into a 512x512 image on the CPU, printed for the record.
#[test]
fn decode_512px_timing() {
    let model = load("taesd-decode");
    let latents = Tensor::randn(0f32, 1f32, (1, 4, 64, 64), &Device::Cpu).expect("latents");
    let start = Instant::now();
    let image = model.decode(&latents).expect("decode");
    let elapsed = start.elapsed();
    assert_eq!(image.dims(), &[1, 3, 512, 512]);
    println!("taesd decode 64x64 -> 512x512: {elapsed:?}");
}
