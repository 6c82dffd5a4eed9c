//! Arbitrary bytes through what the server does with a request body: JSON into the OpenRouter or
//! OpenAI request type (the first byte picks which), then the validator against fixed model
//! capabilities (an SD-like and a FLUX-like model). It must never panic, and whatever it accepts
//! must be inside the model's bounds.
#![no_main]

use imago::api::wire::{openai, openrouter};
use imago::domain::caps::ModelCaps;
use imago::domain::request::{validate_openai, validate_openrouter, ValidatedRequest};
use imago_models::specs::{Family, QualitySteps};
use libfuzzer_sys::fuzz_target;

fn caps(family: Family) -> ModelCaps {
    let flux = family == Family::Flux;
    ModelCaps {
        id: "fuzz/model".into(),
        name: "Fuzz".into(),
        description: "fixed capabilities for fuzzing".into(),
        family,
        size_multiple: if flux { 16 } else { 8 },
        min_side: 256,
        max_side: 1024,
        default_width: 512,
        default_height: 512,
        default_steps: 4,
        max_steps: 50,
        default_guidance: 7.5,
        quality_steps: QualitySteps {
            auto: 4,
            low: 2,
            medium: 4,
            high: 8,
            xhigh: 12,
            max: 16,
        },
        schedulers: if flux {
            Vec::new()
        } else {
            vec!["euler".into(), "euler_a".into(), "ddim".into()]
        },
        max_references: 1,
        max_n: 10,
        supports_transparent: false,
        preview_decoder: false,
        created: 0,
    }
}

fn check_bounds(request: &ValidatedRequest, caps: &ModelCaps) {
    assert!((1..=caps.max_n).contains(&request.n), "n {}", request.n);
    for side in [request.width, request.height] {
        assert!(
            (caps.min_side..=caps.max_side).contains(&side) && side % caps.size_multiple == 0,
            "size {}x{}",
            request.width,
            request.height
        );
    }
    assert!(
        (1..=caps.max_steps).contains(&request.steps),
        "steps {}",
        request.steps
    );
    assert!(request.partial_images <= 3);
    assert!(request.strength > 0.0 && request.strength <= 1.0);
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, json)) = data.split_first() else {
        return;
    };
    for family in [Family::StableDiffusion, Family::Flux] {
        let caps = caps(family);
        if selector & 1 == 0 {
            if let Ok(request) = serde_json::from_slice::<openrouter::ImageGenerationRequest>(json) {
                if let Ok(valid) = validate_openrouter(&request, &caps) {
                    check_bounds(&valid, &caps);
                }
            }
        } else if let Ok(request) = serde_json::from_slice::<openai::ImageGenerateRequest>(json) {
            if let Ok(valid) = validate_openai(&request, &caps) {
                check_bounds(&valid, &caps);
            }
        }
    }
});
