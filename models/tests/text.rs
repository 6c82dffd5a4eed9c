//! CLIP tokenizer and text encoders against diffusers/transformers: the parity fixtures'
//! `input_ids` / `prompt_embeds` / `pooled_prompt_embeds`, and the reference data in
//! `tests/data/text/` (see its README.md).
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use imago_models::text::{
    input_ids_tensor, ClipTextConfig, ClipTextModel, ClipTokenizer, TokenizedPrompt,
};
use imago_models::ModelError;

const ATOL: f32 = 1e-4;

fn parity(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/parity")
        .join(case)
}

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/text")
        .join(name)
}

fn tensors(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn case_json(case: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(parity(case).join("case.json")).expect("case.json");
    serde_json::from_str(&text).expect("case.json parses")
}

fn prompt_of(case: &str, key: &str) -> String {
    case_json(case)[key]
        .as_str()
        .expect("prompt string")
        .to_owned()
}

fn ids_row(t: &Tensor) -> Vec<u32> {
    t.to_dtype(DType::I64)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<i64>())
        .expect("ids")
        .into_iter()
        .map(|id| u32::try_from(id).expect("id fits u32"))
        .collect()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    (a - b)
        .and_then(|d| d.abs())
        .and_then(|d| d.flatten_all())
        .and_then(|d| d.max(0))
        .and_then(|d| d.to_scalar::<f32>())
        .expect("diff")
}

fn assert_close(name: &str, got: &Tensor, want: &Tensor) {
    let diff = max_abs_diff(got, want);
    assert!(diff <= ATOL, "{name}: max |diff| {diff} > {ATOL}");
}

fn tokenizer(case: &str, folder: &str) -> ClipTokenizer {
    ClipTokenizer::from_dir(&parity(case).join("model").join(folder)).expect("tokenizer loads")
}

fn encoder(case: &str, folder: &str) -> ClipTextModel {
    let dir = parity(case).join("model").join(folder);
    let config = ClipTextConfig::from_file(&dir.join("config.json")).expect("config");
    // SAFETY: the fixture file is not modified while mapped.
    let vb = unsafe {
        candle_nn::VarBuilder::from_mmaped_safetensors(
            &[dir.join("model.safetensors")],
            DType::F32,
            &Device::Cpu,
        )
    }
    .expect("weights map");
    ClipTextModel::new(vb, &config).expect("encoder builds")
}

fn ids_tensor(prompt: &TokenizedPrompt) -> Tensor {
    input_ids_tensor(&[&prompt.ids], &Device::Cpu).expect("ids tensor")
}

// ---------------------------------------------------------------- tokenizer

#[test]
fn tokenizer_reproduces_fixture_input_ids() {
    for case in [
        "sd-turbo-1step",
        "sd-euler-cfg",
        "sd-dpmpp-vpred",
        "sd-euler-a-3step",
    ] {
        let expected = tensors(&parity(case).join("expected.safetensors"));
        let encoded = tokenizer(case, "tokenizer").encode(&prompt_of(case, "prompt"));
        assert_eq!(encoded.ids, ids_row(&expected["input_ids"]), "{case}");
        assert!(!encoded.truncated, "{case}");
    }
}

#[test]
fn sdxl_tokenizers_pad_differently() {
    let reference = tensors(&data("clip_embeds.safetensors"));
    let prompt = prompt_of("sdxl-turbo-1step", "prompt");
    let one = tokenizer("sdxl-turbo-1step", "tokenizer").encode(&prompt);
    let two = tokenizer("sdxl-turbo-1step", "tokenizer_2").encode(&prompt);
    assert_eq!(one.ids, ids_row(&reference["sdxl_tokenizer_input_ids"]));
    assert_eq!(two.ids, ids_row(&reference["sdxl_tokenizer_2_input_ids"]));
    assert_eq!(one.ids.last(), Some(&49407)); // pad "<|endoftext|>"
    assert_eq!(two.ids.last(), Some(&0)); // pad "!"
}

/// Every prompt of `clip_tokens.json` through the tokenizer folder named `folder`.
fn check_token_table(tokenizer: &ClipTokenizer, folder: &str) {
    let text = std::fs::read_to_string(data("clip_tokens.json")).expect("clip_tokens.json");
    let table: serde_json::Value = serde_json::from_str(&text).expect("parses");
    let cases = table["cases"].as_array().expect("cases");
    assert!(cases.len() >= 20);
    for case in cases {
        let prompt = case["prompt"].as_str().expect("prompt");
        let want_ids: Vec<u32> = case[folder]["ids"]
            .as_array()
            .expect("ids")
            .iter()
            .map(|v| v.as_u64().expect("id") as u32)
            .collect();
        let want_truncated = case[folder]["truncated"].as_bool().expect("truncated");
        let got = tokenizer.encode(prompt);
        assert_eq!(got.ids, want_ids, "{folder}: {prompt:?}");
        assert_eq!(got.truncated, want_truncated, "{folder}: {prompt:?}");
    }
}

#[test]
fn tokenizer_matches_transformers_on_tricky_prompts() {
    for folder in ["tokenizer", "tokenizer_2"] {
        check_token_table(&tokenizer("sdxl-turbo-1step", folder), folder);
    }
}

/// A fast-tokenizer `tokenizer.json` holding the fixture's vocabulary and merges, in the layout
/// transformers writes (merges as pairs, or as "a b" strings in older files).
fn write_tokenizer_json(dir: &Path, merges_as_pairs: bool, pad_in_padding: Option<&str>) {
    let source = parity("sdxl-turbo-1step").join("model/tokenizer");
    let vocab: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(source.join("vocab.json")).expect("vocab"))
            .expect("vocab parses");
    let merges: Vec<serde_json::Value> = std::fs::read_to_string(source.join("merges.txt"))
        .expect("merges")
        .lines()
        .skip(1)
        .map(|line| {
            if merges_as_pairs {
                let (a, b) = line.split_once(' ').expect("pair");
                serde_json::json!([a, b])
            } else {
                serde_json::json!(line)
            }
        })
        .collect();
    let special = |id: u32, content: &str| {
        serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                           "rstrip": false, "normalized": false, "special": true})
    };
    let mut added = vec![
        special(49406, "<|startoftext|>"),
        special(49407, "<|endoftext|>"),
    ];
    if pad_in_padding == Some("!") {
        added.insert(0, special(0, "!"));
    }
    let padding = pad_in_padding.map(|pad| {
        serde_json::json!({"strategy": {"Fixed": 77}, "direction": "Right", "pad_to_multiple_of": null,
                           "pad_id": 0, "pad_type_id": 0, "pad_token": pad})
    });
    let json = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": padding, "added_tokens": added,
        "model": {"type": "BPE", "dropout": null, "unk_token": "<|endoftext|>",
                  "continuing_subword_prefix": "", "end_of_word_suffix": "</w>", "fuse_unk": false,
                  "byte_fallback": false, "ignore_merges": false, "vocab": vocab, "merges": merges}
    });
    std::fs::write(dir.join("tokenizer.json"), json.to_string()).expect("write tokenizer.json");
}

#[test]
fn tokenizer_json_folders_tokenize_like_vocab_and_merges() {
    // Pad token from the tokenizer_2 config files next to tokenizer.json.
    let with_config = tempfile::tempdir().expect("tempdir");
    write_tokenizer_json(with_config.path(), true, None);
    for file in ["tokenizer_config.json", "special_tokens_map.json"] {
        std::fs::copy(
            parity("sdxl-turbo-1step")
                .join("model/tokenizer_2")
                .join(file),
            with_config.path().join(file),
        )
        .expect("copy config");
    }
    let loaded = ClipTokenizer::from_dir(with_config.path()).expect("loads");
    check_token_table(&loaded, "tokenizer_2");

    // Pad token from tokenizer.json's own padding section, string merges, no config files.
    let bare = tempfile::tempdir().expect("tempdir");
    write_tokenizer_json(bare.path(), false, Some("!"));
    let loaded = ClipTokenizer::from_dir(bare.path()).expect("loads");
    assert_eq!(loaded.model_max_length(), 77);
    check_token_table(&loaded, "tokenizer_2");

    // No pad anywhere: CLIP's default pad "<|endoftext|>".
    let default_pad = tempfile::tempdir().expect("tempdir");
    write_tokenizer_json(default_pad.path(), true, None);
    check_token_table(
        &ClipTokenizer::from_dir(default_pad.path()).expect("loads"),
        "tokenizer",
    );
}

#[test]
fn tokenizer_errors_name_the_file() {
    let empty = tempfile::tempdir().expect("tempdir");
    match ClipTokenizer::from_dir(empty.path()) {
        Err(ModelError::MissingFile { path, .. }) => assert!(path.ends_with("vocab.json")),
        other => panic!("expected MissingFile, got {:?}", other.err()),
    }

    let source = parity("sd-turbo-1step").join("model/tokenizer");
    let broken = tempfile::tempdir().expect("tempdir");
    std::fs::copy(source.join("vocab.json"), broken.path().join("vocab.json")).expect("copy");
    match ClipTokenizer::from_dir(broken.path()) {
        Err(ModelError::MissingFile { path, .. }) => assert!(path.ends_with("merges.txt")),
        other => panic!("expected MissingFile, got {:?}", other.err()),
    }
    std::fs::write(
        broken.path().join("merges.txt"),
        "#version: 0.2\ni n\nthree parts here\n",
    )
    .expect("write");
    match ClipTokenizer::from_dir(broken.path()) {
        Err(ModelError::InvalidFile { path, message }) => {
            assert!(path.ends_with("merges.txt"));
            assert!(message.contains("line 3"), "{message}");
        }
        other => panic!("expected InvalidFile, got {:?}", other.err()),
    }
    std::fs::write(broken.path().join("merges.txt"), "#version: 0.2\ni n\n").expect("write");
    std::fs::write(
        broken.path().join("special_tokens_map.json"),
        r#"{"pad_token": "<not-in-vocab>"}"#,
    )
    .expect("write");
    match ClipTokenizer::from_dir(broken.path()) {
        Err(ModelError::InvalidFile { message, .. }) => {
            assert!(message.contains("<not-in-vocab>"), "{message}")
        }
        other => panic!("expected InvalidFile, got {:?}", other.err()),
    }
    std::fs::write(broken.path().join("vocab.json"), "{not json").expect("write");
    match ClipTokenizer::from_dir(broken.path()) {
        Err(ModelError::InvalidFile { path, .. }) => assert!(path.ends_with("vocab.json")),
        other => panic!("expected InvalidFile, got {:?}", other.err()),
    }
}

#[test]
fn tokenizer_from_parts_for_tiny_models() {
    let vocab: HashMap<String, u32> = [
        ("a", 0),
        ("b", 1),
        ("a</w>", 2),
        ("b</w>", 3),
        ("ab</w>", 4),
        ("<|startoftext|>", 5),
        ("<|endoftext|>", 6),
        ("!", 7),
    ]
    .into_iter()
    .map(|(s, i)| (s.to_owned(), i))
    .collect();
    let merges = vec![("a".to_owned(), "b</w>".to_owned())];
    let tokenizer = ClipTokenizer::from_parts(vocab.clone(), merges.clone(), "!", 6).expect("ok");
    assert_eq!(tokenizer.model_max_length(), 6);
    assert_eq!(
        tokenizer.encode("AB b"),
        TokenizedPrompt {
            ids: vec![5, 4, 3, 6, 7, 7],
            truncated: false
        }
    );
    assert_eq!(
        tokenizer.encode("ab ab ab ab a"),
        TokenizedPrompt {
            ids: vec![5, 4, 4, 4, 4, 6],
            truncated: true
        }
    );
    assert!(ClipTokenizer::from_parts(vocab.clone(), merges.clone(), "<pad>", 77).is_err());
    assert!(ClipTokenizer::from_parts(vocab, merges, "!", 1).is_err());
}

// ---------------------------------------------------------------- encoders

#[test]
fn sd_prompt_embeds_match_diffusers() {
    // SD 2.x-like (erf GELU) and SD 1.x-like (quick GELU) encoders.
    for case in [
        "sd-turbo-1step",
        "sd-euler-cfg",
        "sd-dpmpp-vpred",
        "sd-euler-a-3step",
    ] {
        let expected = tensors(&parity(case).join("expected.safetensors"));
        let ids = tokenizer(case, "tokenizer").encode(&prompt_of(case, "prompt"));
        let out = encoder(case, "text_encoder")
            .forward(&ids_tensor(&ids))
            .expect("forward");
        assert_close(case, &out.last_hidden_state, &expected["prompt_embeds"]);
    }
}

#[test]
fn sd_negative_prompt_embeds_match_transformers() {
    let reference = tensors(&data("clip_embeds.safetensors"));
    let case = "sd-euler-cfg";
    let ids = tokenizer(case, "tokenizer").encode(&prompt_of(case, "negative_prompt"));
    assert_eq!(ids.ids, ids_row(&reference["euler_cfg_negative_input_ids"]));
    let out = encoder(case, "text_encoder")
        .forward(&ids_tensor(&ids))
        .expect("forward");
    assert_close(
        "negative prompt_embeds",
        &out.last_hidden_state,
        &reference["euler_cfg_negative_prompt_embeds"],
    );
}

#[test]
fn sdxl_prompt_and_pooled_embeds_match_diffusers() {
    let case = "sdxl-turbo-1step";
    let expected = tensors(&parity(case).join("expected.safetensors"));
    let prompt = prompt_of(case, "prompt");
    let one = encoder(case, "text_encoder")
        .forward(&ids_tensor(&tokenizer(case, "tokenizer").encode(&prompt)))
        .expect("forward 1");
    let two = encoder(case, "text_encoder_2")
        .forward(&ids_tensor(&tokenizer(case, "tokenizer_2").encode(&prompt)))
        .expect("forward 2");
    let prompt_embeds = Tensor::cat(
        &[&one.penultimate_hidden_state, &two.penultimate_hidden_state],
        2,
    )
    .expect("cat");
    assert_close("prompt_embeds", &prompt_embeds, &expected["prompt_embeds"]);
    assert_close(
        "pooled_prompt_embeds",
        &two.pooled,
        &expected["pooled_prompt_embeds"],
    );
}

#[test]
fn batched_prompts_match_reference_and_single_runs() {
    let reference = tensors(&data("clip_embeds.safetensors"));
    let case = "sd-turbo-1step";
    let tokenizer = tokenizer(case, "tokenizer");
    let model = encoder(case, "text_encoder");
    // The second prompt holds an eos early: the pooled row is taken at that first eos.
    let prompts = ["a photo of a cat", "<|endoftext|> early eos, then text"];
    let encoded: Vec<TokenizedPrompt> = prompts.iter().map(|p| tokenizer.encode(p)).collect();
    let rows: Vec<&[u32]> = encoded.iter().map(|e| e.ids.as_slice()).collect();
    let batch_ids = input_ids_tensor(&rows, &Device::Cpu).expect("ids");
    assert_eq!(
        ids_row(&batch_ids),
        ids_row(&reference["turbo_batch_input_ids"])
    );

    let batch = model.forward(&batch_ids).expect("batch forward");
    assert_close(
        "last_hidden_state",
        &batch.last_hidden_state,
        &reference["turbo_batch_last_hidden_state"],
    );
    assert_close(
        "hidden_states[-2]",
        &batch.penultimate_hidden_state,
        &reference["turbo_batch_penultimate"],
    );
    assert_close(
        "pooler_output",
        &batch.pooled,
        &reference["turbo_batch_pooled"],
    );

    for (row, prompt) in encoded.iter().enumerate() {
        let single = model.forward(&ids_tensor(prompt)).expect("single forward");
        let pick = |t: &Tensor| t.narrow(0, row, 1).expect("row");
        let same = |a: &Tensor, b: &Tensor| max_abs_diff(a, b) <= 1e-6;
        assert!(same(
            &single.last_hidden_state,
            &pick(&batch.last_hidden_state)
        ));
        assert!(same(
            &single.penultimate_hidden_state,
            &pick(&batch.penultimate_hidden_state)
        ));
        assert!(same(&single.pooled, &pick(&batch.pooled)));
    }
}

#[test]
fn legacy_eos_token_id_two_pools_at_the_largest_id() {
    // Old CLIP configs say eos_token_id 2; transformers then pools at argmax(input_ids).
    let dir = parity("sd-turbo-1step").join("model/text_encoder");
    let mut config = ClipTextConfig::from_file(&dir.join("config.json")).expect("config");
    config.eos_token_id = imago_models::text::TokenIds::One(2);
    // SAFETY: the fixture file is not modified while mapped.
    let vb = unsafe {
        candle_nn::VarBuilder::from_mmaped_safetensors(
            &[dir.join("model.safetensors")],
            DType::F32,
            &Device::Cpu,
        )
    }
    .expect("weights map");
    let model = ClipTextModel::new(vb, &config).expect("builds");
    // Token 49406 (bos) repeated: the largest id 49407 sits at position 4.
    let mut ids = vec![49406u32, 320, 1125, 539, 49407, 49406];
    ids.resize(77, 0);
    let out = model
        .forward(&input_ids_tensor(&[&ids], &Device::Cpu).expect("ids"))
        .expect("forward");
    let row = out
        .last_hidden_state
        .narrow(1, 4, 1)
        .and_then(|t| t.squeeze(1))
        .expect("row");
    assert!(max_abs_diff(&out.pooled, &row) <= 0.0);
    let other = out
        .last_hidden_state
        .narrow(1, 5, 1)
        .and_then(|t| t.squeeze(1))
        .expect("row");
    assert!(max_abs_diff(&out.pooled, &other) > 1e-3);
}

#[test]
fn config_from_file_rejects_unsupported_activation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.json");
    std::fs::write(&path, r#"{"hidden_act": "mish"}"#).expect("write");
    match ClipTextConfig::from_file(&path) {
        Err(ModelError::InvalidFile { path: p, message }) => {
            assert_eq!(p, path);
            assert!(message.contains("mish"), "{message}");
        }
        other => panic!("expected InvalidFile, got {other:?}"),
    }
    match ClipTextConfig::from_file(&dir.path().join("absent.json")) {
        Err(ModelError::MissingFile { .. }) => {}
        other => panic!("expected MissingFile, got {other:?}"),
    }
}

#[test]
fn flux_clip_pooled_output_matches_diffusers() {
    // FLUX takes CLIPTextModel's pooler_output (no projection) as its pooled embedding.
    let case = "flux-schnell-4step";
    let expected = tensors(&parity(case).join("expected.safetensors"));
    let ids = tokenizer(case, "tokenizer").encode(&prompt_of(case, "prompt"));
    let out = encoder(case, "text_encoder")
        .forward(&ids_tensor(&ids))
        .expect("forward");
    assert_close(
        "pooled_prompt_embeds",
        &out.pooled,
        &expected["pooled_prompt_embeds"],
    );
}

#[test]
fn normalized_added_tokens_match_after_lower_casing() {
    // Real SD tokenizer_config.json files list the specials in `added_tokens_decoder` with
    // "normalized": true; transformers then matches them in the lower-cased text
    // (ids below computed with transformers 5.24 on this same folder).
    let source = parity("sd-turbo-1step").join("model/tokenizer");
    let dir = tempfile::tempdir().expect("tempdir");
    for file in ["vocab.json", "merges.txt", "special_tokens_map.json"] {
        std::fs::copy(source.join(file), dir.path().join(file)).expect("copy");
    }
    let token = |content: &str| {
        serde_json::json!({"content": content, "lstrip": false, "normalized": true,
                           "rstrip": false, "single_word": false, "special": true})
    };
    let config = serde_json::json!({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": 77,
        "added_tokens_decoder": {"49406": token("<|startoftext|>"), "49407": token("<|endoftext|>")}
    });
    std::fs::write(dir.path().join("tokenizer_config.json"), config.to_string()).expect("write");
    let tokenizer = ClipTokenizer::from_dir(dir.path()).expect("loads");
    let mut want = vec![49406, 343, 49406, 344, 49407];
    want.resize(77, 49407);
    assert_eq!(tokenizer.encode("x <|STARTOFTEXT|> y").ids, want);
    let mut want = vec![49406, 343, 49407, 344, 49407];
    want.resize(77, 49407);
    assert_eq!(tokenizer.encode("x<|endoftext|>y").ids, want);
}
