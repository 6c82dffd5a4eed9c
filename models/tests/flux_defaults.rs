//! The built-in FLUX model takes its spec's defaults: a request without `max_sequence_length`
//! pads the prompt to the spec's T5 length, not the pipeline's fallback.
use imago_models::device::{DTypeChoice, DeviceChoice};
use imago_models::pipeline::{GenerationRequest, LoadedModel, NoObserver};

fn request(max_sequence_length: Option<usize>) -> GenerationRequest {
    GenerationRequest {
        prompt: "a lighthouse at dusk".into(),
        negative_prompt: None,
        seed: 5,
        steps: 1,
        guidance_scale: 0.0,
        width: 64,
        height: 64,
        batch_size: 1,
        scheduler: None,
        init_image: None,
        max_sequence_length,
    }
}

#[test]
fn requests_without_a_t5_length_use_the_spec_default() {
    let model = LoadedModel::load("imago/tiny-flux", DeviceChoice::Cpu, DTypeChoice::F32).unwrap();
    let spec_len = model
        .defaults()
        .max_sequence_length
        .expect("FLUX spec has a T5 length");
    assert_eq!(spec_len, 64);
    let pixels = |len| {
        model
            .generate(&request(len), &mut NoObserver)
            .unwrap()
            .images[0]
            .as_raw()
            .clone()
    };
    let default = pixels(None);
    assert_eq!(default, pixels(Some(spec_len)));
    // T5 attends over its padding (no mask, as diffusers), so another length gives another image.
    assert_ne!(default, pixels(Some(32)));
    assert_eq!(model.size_multiple(), 16);
}
