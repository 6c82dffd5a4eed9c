//! The engine against diffusers: every parity case (the shared fixtures and the extra cases made
//! with diffusers from the same models) must match noise, embeddings, every step's latents, the
//! decoded image and the 8-bit PNG within the fixtures' tolerances.
mod common;

use std::ops::ControlFlow;

use candle_core::Tensor;
use common::{assert_close, assert_png_close, Case};
use imago_models::device::{DTypeChoice, DeviceChoice};
use imago_models::pipeline::{DiffusionPipeline, GenerationRequest, InitImage, LoadedModel, StepObserver, StepProgress};

#[derive(Default)]
struct Recorder {
    noise: Option<Tensor>,
    steps: Vec<Tensor>,
}

impl StepObserver for Recorder {
    fn on_noise(&mut self, noise: &Tensor) {
        self.noise = Some(noise.clone());
    }

    fn on_step(&mut self, progress: &StepProgress<'_>) -> ControlFlow<()> {
        assert_eq!(progress.step, self.steps.len());
        self.steps.push(progress.latents.clone());
        ControlFlow::Continue(())
    }
}

fn run_case(set: &str, name: &str) {
    let case = Case::load(set, name);
    let model = LoadedModel::load(case.model_dir().to_str().unwrap(), DeviceChoice::Cpu, DTypeChoice::F32).unwrap();
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

    // Prompt embeddings of the positive prompt, batch 1.
    let DiffusionPipeline::StableDiffusion(sd) = &model.pipeline;
    if let Some(want) = expected.get("prompt_embeds") {
        let got = sd.encode_prompt(&case.prompt, None, 1, false).unwrap();
        assert_close("prompt_embeds", &got.embeds.narrow(0, 0, 1).unwrap(), &want.narrow(0, 0, 1).unwrap(), case.atol_latents);
        if let Some(want_pooled) = expected.get("pooled_prompt_embeds") {
            let pooled = got.pooled.expect("SDXL gives pooled embeddings");
            assert_close("pooled_prompt_embeds", &pooled.narrow(0, 0, 1).unwrap(), &want_pooled.narrow(0, 0, 1).unwrap(), case.atol_latents);
        }
    }

    let mut recorder = Recorder::default();
    let generation = model.generate(&request, &mut recorder).unwrap();

    if let Some(want) = expected.get("latents_init") {
        assert_close("latents_init (seeded noise)", recorder.noise.as_ref().unwrap(), want, 1e-6);
    }
    let expected_steps = (0..).take_while(|i| expected.contains_key(&format!("step_latents_{i}"))).count();
    assert_eq!(recorder.steps.len(), expected_steps, "number of denoising steps");
    for (i, got) in recorder.steps.iter().enumerate() {
        assert_close(&format!("step_latents_{i}"), got, &expected[&format!("step_latents_{i}")], case.atol_latents);
    }
    assert_close("image", &generation.decoded, &expected["image"], case.atol_image);
    assert_eq!(generation.images.len(), case.n);
    for (i, image) in generation.images.iter().enumerate() {
        assert_png_close(&case.dir.join(format!("expected-{i}.png")), image, &case.expected_png(i));
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
