//! The engine against diffusers: every parity case (the shared fixtures and the extra cases made
//! with diffusers from the same models) must match noise, embeddings, every step's latents, the
//! decoded image and the 8-bit PNG within the fixtures' tolerances.
mod common;

use std::ops::ControlFlow;

use candle_core::Tensor;
use common::{assert_close, assert_png_close, Case};
use imago_models::device::{DTypeChoice, DeviceChoice};
use imago_models::pipeline::{
    DiffusionPipeline, GenerationRequest, InitImage, LoadedModel, StepObserver, StepProgress,
};

#[derive(Default)]
struct Recorder {
    noise: Option<Tensor>,
    steps: Vec<Tensor>,
    timesteps: Vec<f64>,
}

impl StepObserver for Recorder {
    fn on_noise(&mut self, noise: &Tensor) {
        self.noise = Some(noise.clone());
    }

    fn on_step(&mut self, progress: &StepProgress<'_>) -> ControlFlow<()> {
        assert_eq!(progress.step, self.steps.len());
        self.steps.push(progress.latents.clone());
        self.timesteps.push(progress.timestep);
        ControlFlow::Continue(())
    }
}

fn run_case(set: &str, name: &str) {
    let case = Case::load(set, name);
    let model = LoadedModel::load(
        case.model_dir().to_str().unwrap(),
        DeviceChoice::Cpu,
        DTypeChoice::F32,
    )
    .unwrap();
    let expected = case.expected();
    let init_image = case.input_image_path().map(|path| InitImage {
        image: image::open(path).unwrap().to_rgb8(),
        strength: case.strength.expect("img2img case has a strength"),
    });
    let request = GenerationRequest {
        prompt: case.prompt.clone(),
        negative_prompt: case.negative_prompt.clone(),
        seed: case.seed,
        steps: case.steps,
        guidance_scale: case.guidance_scale,
        width: case.width,
        height: case.height,
        batch_size: case.n,
        scheduler: case.scheduler.as_deref().map(|s| s.parse().unwrap()),
        init_image,
    };

    // Prompt embeddings for one image: with guidance the unconditional row comes first.
    let DiffusionPipeline::StableDiffusion(sd) = &model.pipeline;
    if let Some(want) = expected.get("prompt_embeds") {
        let cfg = request.uses_cfg();
        let got = sd
            .encode_prompt(&case.prompt, case.negative_prompt.as_deref(), 1, cfg)
            .unwrap();
        let pos = usize::from(cfg);
        let row = |t: &Tensor, i: usize| t.narrow(0, i, 1).unwrap();
        assert_close(
            "prompt_embeds",
            &row(&got.embeds, pos),
            &row(want, 0),
            case.atol_latents,
        );
        if let Some(want_neg) = expected.get("negative_prompt_embeds") {
            assert_close(
                "negative_prompt_embeds",
                &row(&got.embeds, 0),
                &row(want_neg, 0),
                case.atol_latents,
            );
        }
        if let Some(want_pooled) = expected.get("pooled_prompt_embeds") {
            let pooled = got.pooled.as_ref().expect("SDXL gives pooled embeddings");
            assert_close(
                "pooled_prompt_embeds",
                &row(pooled, pos),
                &row(want_pooled, 0),
                case.atol_latents,
            );
            if let Some(want_neg) = expected.get("negative_pooled_prompt_embeds") {
                assert_close(
                    "negative_pooled_prompt_embeds",
                    &row(pooled, 0),
                    &row(want_neg, 0),
                    case.atol_latents,
                );
            }
        }
    }

    let mut recorder = Recorder::default();
    let generation = model.generate(&request, &mut recorder).unwrap();

    // Text-to-image cases store the starting noise as `latents_init`, image-to-image ones as `noise`.
    if let Some(want) = expected
        .get("latents_init")
        .or_else(|| expected.get("noise"))
    {
        assert_close("seeded noise", recorder.noise.as_ref().unwrap(), want, 1e-6);
    }
    if let Some(want) = expected.get("timesteps") {
        let want = want
            .to_dtype(candle_core::DType::F64)
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        assert_eq!(
            recorder.timesteps.len(),
            want.len(),
            "timesteps {:?} vs {want:?}",
            recorder.timesteps
        );
        for (got, want) in recorder.timesteps.iter().zip(&want) {
            assert!(
                (got - want).abs() < 1e-3,
                "timesteps {:?} vs {want:?}",
                recorder.timesteps
            );
        }
    }
    let expected_steps = (0..)
        .take_while(|i| expected.contains_key(&format!("step_latents_{i}")))
        .count();
    assert_eq!(
        recorder.steps.len(),
        expected_steps,
        "number of denoising steps"
    );
    for (i, got) in recorder.steps.iter().enumerate() {
        assert_close(
            &format!("step_latents_{i}"),
            got,
            &expected[&format!("step_latents_{i}")],
            case.atol_latents,
        );
    }
    assert_eq!(
        generation.prompt_truncated,
        name.contains("truncated"),
        "prompt truncation reported"
    );
    assert_close(
        "image",
        &generation.decoded,
        &expected["image"],
        case.atol_image,
    );
    assert_eq!(generation.images.len(), case.n);
    for (i, image) in generation.images.iter().enumerate() {
        assert_png_close(
            &case.dir.join(format!("expected-{i}.png")),
            image,
            &case.expected_png(i),
        );
    }
}

macro_rules! parity_cases {
    ($set:literal: $($test:ident => $name:literal),* $(,)?) => {
        $(
            #[test]
            fn $test() {
                run_case($set, $name);
            }
        )*
    };
}

parity_cases!("parity":
    parity_sd_turbo_1step => "sd-turbo-1step",
    parity_sd_euler_cfg => "sd-euler-cfg",
    parity_sdxl_turbo_1step => "sdxl-turbo-1step",
    parity_sd_img2img => "sd-img2img",
    parity_sd_dpmpp_vpred => "sd-dpmpp-vpred",
    parity_sd_euler_a_3step => "sd-euler-a-3step",
);

parity_cases!("extra":
    extra_sd_ddim_cfg_batch2 => "sd-ddim-cfg-batch2",
    extra_sd_ddim_vpred_config => "sd-ddim-vpred-config",
    extra_sd_dpmpp_vpred_trailing => "sd-dpmpp-vpred-trailing",
    extra_sd_dpmpp2m_bigseed => "sd-dpmpp2m-bigseed",
    extra_sd_euler_leading_offset0 => "sd-euler-leading-offset0",
    extra_sd_euler_linspace => "sd-euler-linspace",
    extra_sd_img2img_dpmpp_karras_batch2 => "sd-img2img-dpmpp-karras-batch2",
    extra_sd_long_prompt_truncated => "sd-long-prompt-truncated",
    extra_sd_turbo_euler_batch3 => "sd-turbo-euler-batch3",
    extra_sdxl_cfg_zero_neg => "sdxl-cfg-zero-neg",
    extra_sdxl_euler_cfg_neg => "sdxl-euler-cfg-neg",
    extra_sdxl_img2img => "sdxl-img2img",
    extra_sdxl_leading_offset0 => "sdxl-leading-offset0",
);

/// Every case folder on disk is listed above (a new fixture cannot be silently skipped).
#[test]
fn every_case_folder_is_tested() {
    let listed = include_str!("parity.rs");
    for set in ["parity", "extra"] {
        for entry in std::fs::read_dir(common::fixtures().join(set)).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().into_string().unwrap();
            let case_json = entry.path().join("case.json");
            let Ok(text) = std::fs::read_to_string(&case_json) else {
                continue;
            };
            // Pipeline cases of the SD families (FLUX and the preview decoders are other issues').
            let case: serde_json::Value = serde_json::from_str(&text).unwrap();
            if case.get("prompt").is_some() && !name.starts_with("flux") {
                assert!(
                    listed.contains(&format!("=> \"{name}\"")),
                    "case {set}/{name} is not in tests/parity.rs"
                );
            }
        }
    }
}
