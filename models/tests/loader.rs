//! The loader against the parity fixtures (real diffusers layout) and against folders and hub
//! caches laid out in temporary directories.
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use imago_models::loader::{cached_snapshot, BuiltInModel, Component, ModelFolder, ModelSource};
use imago_models::ModelError;
use serde::Deserialize;

fn parity_model(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/parity")
        .join(case)
        .join("model")
}

fn write_json(path: &Path, value: serde_json::Value) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, serde_json::to_string_pretty(&value).unwrap()).unwrap();
}

fn save(path: &Path, tensors: &[(&str, Tensor)]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let map: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(n, t)| (n.to_string(), t.clone()))
        .collect();
    candle_core::safetensors::save(&map, path).unwrap();
}

fn ramp(n: usize, dtype: DType) -> Tensor {
    Tensor::arange(0f32, n as f32, &Device::Cpu)
        .unwrap()
        .affine(0.25, -1.0)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

/// A pipeline folder with one `unet` component (diffusers) and one `text_encoder` (transformers).
fn pipeline(root: &Path) {
    write_json(
        &root.join("model_index.json"),
        serde_json::json!({
            "_class_name": "StableDiffusionPipeline",
            "_diffusers_version": "0.42.1",
            "requires_safety_checker": false,
            "safety_checker": [null, null],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "text_encoder": ["transformers", "CLIPTextModel"],
        }),
    );
    fs::create_dir_all(root.join("unet")).unwrap();
    fs::create_dir_all(root.join("text_encoder")).unwrap();
}

fn unet(root: &Path) -> Component {
    ModelFolder::open(root).unwrap().component("unet").unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[derive(Debug, Deserialize)]
struct UnetSubset {
    in_channels: usize,
    cross_attention_dim: usize,
    #[serde(default = "default_sample_size")]
    sample_size: usize,
}

fn default_sample_size() -> usize {
    64
}

#[test]
fn reads_the_sdxl_parity_pipeline() {
    let folder = ModelFolder::open(&parity_model("sdxl-turbo-1step")).unwrap();
    assert_eq!(folder.pipeline_class(), "StableDiffusionXLPipeline");
    assert_eq!(
        folder
            .index_value::<bool>("force_zeros_for_empty_prompt")
            .unwrap(),
        Some(true)
    );
    assert_eq!(folder.index_value::<bool>("no_such_key").unwrap(), None);
    assert!(folder.index_value::<u32>("_class_name").is_err());
    for name in [
        "unet",
        "vae",
        "text_encoder",
        "text_encoder_2",
        "tokenizer",
        "tokenizer_2",
        "scheduler",
    ] {
        assert!(folder.has_component(name), "{name}");
    }
    for name in [
        "feature_extractor",
        "image_encoder",
        "_class_name",
        "force_zeros_for_empty_prompt",
        "transformer",
    ] {
        assert!(!folder.has_component(name), "{name}");
    }
    let null = folder.component("image_encoder").unwrap_err().to_string();
    assert!(
        null.contains("image_encoder") && null.contains("null"),
        "{null}"
    );
    let unlisted = folder.component("transformer").unwrap_err().to_string();
    assert!(
        unlisted.contains("transformer") && unlisted.contains("not listed"),
        "{unlisted}"
    );

    let unet = folder.component("unet").unwrap();
    assert_eq!(unet.class_name(), "UNet2DConditionModel");
    assert_eq!(unet.library(), Some("diffusers"));
    let cfg: UnetSubset = unet.config().unwrap();
    let raw: serde_json::Value = unet.config().unwrap();
    assert_eq!(cfg.in_channels as u64, raw["in_channels"].as_u64().unwrap());
    assert_eq!(
        cfg.cross_attention_dim as u64,
        raw["cross_attention_dim"].as_u64().unwrap()
    );
    assert_eq!(
        cfg.sample_size as u64,
        raw["sample_size"].as_u64().unwrap_or(64)
    );
    assert_eq!(unet.config_path(), unet.dir().join("config.json"));
    assert_eq!(
        unet.weight_files().unwrap(),
        vec![unet.dir().join("diffusion_pytorch_model.safetensors")]
    );
    let te = folder.component("text_encoder_2").unwrap();
    assert_eq!(
        te.weight_files().unwrap(),
        vec![te.dir().join("model.safetensors")]
    );
    let sched = folder.component("scheduler").unwrap();
    assert_eq!(
        sched.config_path(),
        sched.dir().join("scheduler_config.json")
    );
    let sched_cfg: serde_json::Value = sched.config().unwrap();
    assert_eq!(sched_cfg["_class_name"], "EulerAncestralDiscreteScheduler");
    let tok = folder.component("tokenizer").unwrap();
    assert_eq!(tok.config_path(), tok.dir().join("tokenizer_config.json"));
    let tok_cfg: serde_json::Value = tok.config().unwrap();
    assert_eq!(tok_cfg["model_max_length"], 77);
    let no_weights = tok.weight_files().unwrap_err().to_string();
    assert!(
        no_weights.contains("tokenizer") && no_weights.contains("model.safetensors"),
        "{no_weights}"
    );

    // Weights are f16 on disk; the VarBuilder hands them out as f32 with exactly the f16 values.
    let path = unet.dir().join("diffusion_pytorch_model.safetensors");
    let bytes = fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let view = st.tensor("add_embedding.linear_1.weight").unwrap();
    assert_eq!(view.dtype(), safetensors::Dtype::F16);
    let expected: Vec<f32> = view
        .data()
        .chunks_exact(2)
        .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
        .collect();
    let vb = unet.var_builder(DType::F32, &Device::Cpu).unwrap();
    let got = vb
        .pp("add_embedding")
        .pp("linear_1")
        .get(view.shape(), "weight")
        .unwrap();
    assert_eq!(got.dtype(), DType::F32);
    assert_eq!(values(&got), expected);
}

#[test]
fn folder_errors_say_what_is_wrong() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nowhere");
    let err = ModelFolder::open(&missing).unwrap_err();
    assert!(
        matches!(err, ModelError::MissingFile { ref path, .. } if *path == missing),
        "{err}"
    );

    let err = ModelFolder::open(tmp.path()).unwrap_err().to_string();
    assert!(
        err.contains("model_index.json") && err.contains("diffusers"),
        "{err}"
    );

    fs::write(tmp.path().join("model_index.json"), "{ not json").unwrap();
    let err = ModelFolder::open(tmp.path()).unwrap_err();
    assert!(matches!(err, ModelError::InvalidFile { .. }), "{err}");
    assert!(err.to_string().contains("model_index.json"), "{err}");

    pipeline(tmp.path());
    fs::remove_dir(tmp.path().join("unet")).unwrap();
    let err = ModelFolder::open(tmp.path())
        .unwrap()
        .component("unet")
        .unwrap_err();
    let unet_dir = tmp.path().join("unet");
    assert_eq!(
        err.to_string(),
        format!(
            "missing component unet: {} does not exist",
            unet_dir.display()
        )
    );
}

#[test]
fn config_errors_name_the_file_and_serde_message() {
    let tmp = tempfile::tempdir().unwrap();
    pipeline(tmp.path());
    let err = unet(tmp.path())
        .config::<UnetSubset>()
        .unwrap_err()
        .to_string();
    assert!(err.contains("config.json") && err.contains("unet"), "{err}");
    write_json(
        &tmp.path().join("unet/config.json"),
        serde_json::json!({"in_channels": "four", "cross_attention_dim": 8}),
    );
    let err = unet(tmp.path()).config::<UnetSubset>().unwrap_err();
    assert!(matches!(err, ModelError::InvalidFile { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("unet/config.json") && msg.contains("invalid type"),
        "{msg}"
    );
    write_json(
        &tmp.path().join("unet/config.json"),
        serde_json::json!({"in_channels": 4, "cross_attention_dim": 8}),
    );
    let cfg: UnetSubset = unet(tmp.path()).config().unwrap();
    assert_eq!(
        (cfg.in_channels, cfg.cross_attention_dim, cfg.sample_size),
        (4, 8, 64)
    );
}

#[test]
fn prefers_fp16_variant_and_finds_transformers_names() {
    let tmp = tempfile::tempdir().unwrap();
    pipeline(tmp.path());
    let dir = tmp.path().join("unet");
    save(
        &dir.join("diffusion_pytorch_model.safetensors"),
        &[("w", ramp(4, DType::F32))],
    );
    assert_eq!(
        unet(tmp.path()).weight_files().unwrap(),
        vec![dir.join("diffusion_pytorch_model.safetensors")]
    );
    save(
        &dir.join("diffusion_pytorch_model.fp16.safetensors"),
        &[("w", ramp(4, DType::F16))],
    );
    assert_eq!(
        unet(tmp.path()).weight_files().unwrap(),
        vec![dir.join("diffusion_pytorch_model.fp16.safetensors")]
    );
    let te_dir = tmp.path().join("text_encoder");
    save(
        &te_dir.join("model.safetensors"),
        &[("w", ramp(4, DType::BF16))],
    );
    let te = ModelFolder::open(tmp.path())
        .unwrap()
        .component("text_encoder")
        .unwrap();
    assert_eq!(
        te.weight_files().unwrap(),
        vec![te_dir.join("model.safetensors")]
    );
    // bf16 is accepted and converted to the compute dtype.
    let vb = te.var_builder(DType::F32, &Device::Cpu).unwrap();
    assert_eq!(
        values(&vb.get(4, "w").unwrap()),
        vec![-1.0, -0.75, -0.5, -0.25]
    );
}

#[test]
fn refuses_pickle_and_names_what_was_looked_for() {
    let tmp = tempfile::tempdir().unwrap();
    pipeline(tmp.path());
    let err = unet(tmp.path()).weight_files().unwrap_err().to_string();
    for needle in [
        "unet",
        "diffusion_pytorch_model.safetensors",
        "diffusion_pytorch_model.fp16.safetensors",
        "diffusion_pytorch_model.safetensors.index.json",
        "model.safetensors",
    ] {
        assert!(err.contains(needle), "{needle} in {err}");
    }
    fs::write(
        tmp.path().join("unet/diffusion_pytorch_model.bin"),
        b"PK\x03\x04",
    )
    .unwrap();
    let err = unet(tmp.path())
        .var_builder(DType::F32, &Device::Cpu)
        .err()
        .expect("var_builder should fail")
        .to_string();
    assert!(
        err.contains("diffusion_pytorch_model.bin") && err.contains("pickle"),
        "{err}"
    );
}

#[test]
fn loads_sharded_weights_and_names_a_missing_shard() {
    let tmp = tempfile::tempdir().unwrap();
    pipeline(tmp.path());
    let dir = tmp.path().join("unet");
    save(
        &dir.join("diffusion_pytorch_model-00001-of-00002.safetensors"),
        &[("a.weight", ramp(6, DType::F16).reshape((2, 3)).unwrap())],
    );
    save(
        &dir.join("diffusion_pytorch_model-00002-of-00002.safetensors"),
        &[("b.bias", ramp(3, DType::F16))],
    );
    write_json(
        &dir.join("diffusion_pytorch_model.safetensors.index.json"),
        serde_json::json!({
            "metadata": {"total_size": 18},
            "weight_map": {
                "b.bias": "diffusion_pytorch_model-00002-of-00002.safetensors",
                "a.weight": "diffusion_pytorch_model-00001-of-00002.safetensors",
            }
        }),
    );
    let files = unet(tmp.path()).weight_files().unwrap();
    assert_eq!(
        files,
        vec![
            dir.join("diffusion_pytorch_model-00001-of-00002.safetensors"),
            dir.join("diffusion_pytorch_model-00002-of-00002.safetensors"),
        ]
    );
    let vb = unet(tmp.path())
        .var_builder(DType::F32, &Device::Cpu)
        .unwrap();
    assert_eq!(
        values(&vb.get((2, 3), "a.weight").unwrap()),
        vec![-1.0, -0.75, -0.5, -0.25, 0.0, 0.25]
    );
    assert_eq!(
        values(&vb.get(3, "b.bias").unwrap()),
        vec![-1.0, -0.75, -0.5]
    );

    fs::remove_file(dir.join("diffusion_pytorch_model-00002-of-00002.safetensors")).unwrap();
    let err = unet(tmp.path())
        .var_builder(DType::F32, &Device::Cpu)
        .err()
        .expect("var_builder should fail");
    assert!(matches!(err, ModelError::MissingFile { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("diffusion_pytorch_model-00002-of-00002.safetensors"),
        "{err}"
    );

    write_json(
        &dir.join("diffusion_pytorch_model.safetensors.index.json"),
        serde_json::json!({"weight_map": {"a.weight": "../../elsewhere.safetensors"}}),
    );
    let err = unet(tmp.path()).weight_files().unwrap_err().to_string();
    assert!(
        err.contains("elsewhere") && err.contains("index.json"),
        "{err}"
    );
}

#[test]
fn rejects_truncated_corrupt_and_wrong_dtype_files() {
    let tmp = tempfile::tempdir().unwrap();
    pipeline(tmp.path());
    let path = tmp.path().join("unet/diffusion_pytorch_model.safetensors");
    let expect_corrupt = |needle: &str| {
        let err = unet(tmp.path())
            .var_builder(DType::F32, &Device::Cpu)
            .err()
            .expect("var_builder should fail");
        match &err {
            ModelError::Safetensors { path: p, message } => {
                assert_eq!(p, &path);
                assert!(message.contains(needle), "{needle} in {message}");
            }
            other => panic!("expected a Safetensors error, got {other}"),
        }
        assert!(err
            .to_string()
            .contains("diffusion_pytorch_model.safetensors"));
    };

    save(&path, &[("w", ramp(64, DType::F16))]);
    let len = fs::metadata(&path).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len - 10)
        .unwrap();
    expect_corrupt("");

    fs::write(&path, b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage header}").unwrap();
    expect_corrupt("");

    fs::write(&path, b"\x01\x00").unwrap();
    expect_corrupt("too short");

    let ints = Tensor::new(&[1i64, 2, 3], &Device::Cpu).unwrap();
    save(&path, &[("w", ramp(4, DType::F16)), ("step", ints)]);
    expect_corrupt("step");
}

#[test]
fn wrong_shape_is_reported_with_the_tensor_name() {
    let tmp = tempfile::tempdir().unwrap();
    pipeline(tmp.path());
    save(
        &tmp.path().join("unet/diffusion_pytorch_model.safetensors"),
        &[
            (
                "conv_in.proj.weight",
                ramp(12, DType::F16).reshape((3, 4)).unwrap(),
            ),
            ("conv_in.proj.bias", ramp(3, DType::F16)),
        ],
    );
    let vb = unet(tmp.path())
        .var_builder(DType::F32, &Device::Cpu)
        .unwrap();
    assert!(candle_nn::linear(4, 3, vb.pp("conv_in").pp("proj")).is_ok());
    let err = candle_nn::linear(4, 5, vb.pp("conv_in").pp("proj"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("conv_in.proj.weight"), "{err}");
}

#[cfg(unix)]
mod hub_cache {
    use super::*;
    use std::os::unix::fs::symlink;

    const MAIN: &str = "0123456789abcdef0123456789abcdef01234567";
    const OLD: &str = "89abcdef0123456789abcdef0123456789abcdef";

    /// `models--org--tiny/` as huggingface_hub leaves it: blobs named by content hash, snapshot
    /// files symlinked to them, refs holding commit hashes.
    fn fixture_cache(cache: &Path) -> PathBuf {
        let repo = cache.join("models--org--tiny");
        let blobs = repo.join("blobs");
        fs::create_dir_all(&blobs).unwrap();
        write_json(
            &blobs.join("aaaa1111"),
            serde_json::json!({"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"]}),
        );
        write_json(
            &blobs.join("bbbb2222"),
            serde_json::json!({"in_channels": 4, "cross_attention_dim": 32}),
        );
        save(
            &blobs.join("cccc3333"),
            &[("conv.weight", ramp(8, DType::F16))],
        );
        for commit in [MAIN, OLD] {
            let snap = repo.join("snapshots").join(commit);
            fs::create_dir_all(snap.join("unet")).unwrap();
            symlink("../../blobs/aaaa1111", snap.join("model_index.json")).unwrap();
            symlink("../../../blobs/bbbb2222", snap.join("unet/config.json")).unwrap();
            symlink(
                "../../../blobs/cccc3333",
                snap.join("unet/diffusion_pytorch_model.safetensors"),
            )
            .unwrap();
        }
        fs::create_dir_all(repo.join("refs/refs/pr")).unwrap();
        fs::write(repo.join("refs/main"), MAIN).unwrap();
        fs::write(repo.join("refs/v1.0"), format!("{OLD}\n")).unwrap();
        fs::write(repo.join("refs/refs/pr/1"), OLD).unwrap();
        // A ref to a commit whose snapshot was deleted.
        fs::write(repo.join("refs/gone"), "f".repeat(40)).unwrap();
        repo
    }

    #[test]
    fn resolves_refs_and_commits_to_snapshots() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = fixture_cache(tmp.path());
        let snap = |c: &str| Some(repo.join("snapshots").join(c));
        let resolve = |rev| cached_snapshot(tmp.path(), "org/tiny", rev).unwrap();
        assert_eq!(resolve(None), snap(MAIN));
        assert_eq!(resolve(Some("main")), snap(MAIN));
        assert_eq!(resolve(Some("v1.0")), snap(OLD));
        assert_eq!(resolve(Some("refs/pr/1")), snap(OLD));
        assert_eq!(resolve(Some(OLD)), snap(OLD));
        // Not in the cache: unknown ref, ref to a missing snapshot, unknown commit, unknown repo.
        assert_eq!(resolve(Some("v2.0")), None);
        assert_eq!(resolve(Some("gone")), None);
        assert_eq!(resolve(Some(&"e".repeat(40))), None);
        assert_eq!(
            cached_snapshot(tmp.path(), "org/other", None).unwrap(),
            None
        );
        assert_eq!(
            cached_snapshot(&tmp.path().join("no-cache"), "org/tiny", None).unwrap(),
            None
        );
    }

    #[test]
    fn rejects_bad_ids_revisions_and_refs() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = fixture_cache(tmp.path());
        assert!(cached_snapshot(tmp.path(), "../etc", None).is_err());
        assert!(cached_snapshot(tmp.path(), "org/tiny", Some("../../x")).is_err());
        fs::write(repo.join("refs/main"), "not-a-hash").unwrap();
        let err = cached_snapshot(tmp.path(), "org/tiny", None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("refs/main") && err.contains("commit hash"),
            "{err}"
        );
    }

    #[test]
    fn loads_a_snapshot_through_blob_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        fixture_cache(tmp.path());
        let snap = cached_snapshot(tmp.path(), "org/tiny", None)
            .unwrap()
            .unwrap();
        let folder = ModelFolder::open(&snap).unwrap();
        assert_eq!(folder.pipeline_class(), "StableDiffusionPipeline");
        let unet = folder.component("unet").unwrap();
        let cfg: UnetSubset = unet.config().unwrap();
        assert_eq!(cfg.cross_attention_dim, 32);
        let vb = unet.var_builder(DType::F32, &Device::Cpu).unwrap();
        assert_eq!(
            values(&vb.get(8, "conv.weight").unwrap())[..3],
            [-1.0, -0.75, -0.5]
        );
    }
}

#[test]
fn parses_model_sources() {
    for model in BuiltInModel::ALL {
        assert_eq!(
            ModelSource::parse(model.id()).unwrap(),
            ModelSource::BuiltIn(model)
        );
        assert_eq!(model.to_string().parse::<BuiltInModel>().unwrap(), model);
    }
    assert_eq!(BuiltInModel::TinySd.to_string(), "imago/tiny-sd");
    assert_eq!(BuiltInModel::TinySdxl.to_string(), "imago/tiny-sdxl");
    assert!("imago/tiny-sd3".parse::<BuiltInModel>().is_err());
    assert!(ModelSource::parse("imago/tiny-sd@main").is_err());

    let tmp = tempfile::tempdir().unwrap();
    let abs = tmp.path().to_str().unwrap();
    assert_eq!(
        ModelSource::parse(abs).unwrap(),
        ModelSource::Folder(tmp.path().to_path_buf())
    );
    // Tests run in the crate folder: an existing relative path wins over the org/name reading.
    assert_eq!(
        ModelSource::parse("src/loader").unwrap(),
        ModelSource::Folder("src/loader".into())
    );
    assert_eq!(
        ModelSource::parse("./src").unwrap(),
        ModelSource::Folder("./src".into())
    );

    assert_eq!(
        ModelSource::parse("stabilityai/sdxl-turbo").unwrap(),
        ModelSource::HubRepo {
            repo_id: "stabilityai/sdxl-turbo".into(),
            revision: None
        }
    );
    let pinned = ModelSource::parse("stabilityai/sd-turbo@refs/pr/3").unwrap();
    assert_eq!(
        pinned,
        ModelSource::HubRepo {
            repo_id: "stabilityai/sd-turbo".into(),
            revision: Some("refs/pr/3".into())
        }
    );
    assert_eq!(pinned.to_string(), "stabilityai/sd-turbo@refs/pr/3");
    assert!(ModelSource::parse("org/name@").is_err());

    for path in [
        "/no/such/model",
        "./missing-model",
        "../missing-model",
        "~/missing-imago-model",
        "a/b/c",
    ] {
        match ModelSource::parse(path) {
            Err(err @ ModelError::MissingFile { .. }) => {
                let name = path.trim_start_matches('~');
                assert!(err.to_string().contains(name), "{err}");
            }
            other => panic!("{path}: {other:?}"),
        }
    }
    for bad in ["", "   ", "justaword", "org/na me"] {
        assert!(
            matches!(
                ModelSource::parse(bad),
                Err(ModelError::InvalidInput { .. })
            ),
            "{bad:?}"
        );
    }
}
