"""The official OpenRouter Python SDK against `imago serve`, used exactly as a user would.

Environment: IMAGO_E2E_BASE_URL (http://127.0.0.1:PORT), IMAGO_E2E_API_KEY, IMAGO_E2E_MODEL.
Prints one line per check; exits 1 at the first failure."""

from openrouter import OpenRouter, components, errors, utils
from openrouter.utils.eventstreaming import EventStream

from e2e_common import b64_bytes, check, expect_error, fail, run, settings, sniff

BASE, KEY, MODEL = settings()
PROMPT = "a lighthouse on a cliff at dusk"


def client(api_key=KEY):
    # Generation runs on a CPU in CI: a long timeout, and no retries so a 5xx shows at once.
    return OpenRouter(
        api_key=api_key,
        server_url=BASE + "/api/v1",
        timeout_ms=600_000,
        retry_config=utils.RetryConfig("none", None, False),
    )


SDK = client()


def generate(**kwargs):
    return SDK.images.generate(model=MODEL, prompt=PROMPT, **kwargs)


def images_of(name, response, count, media_type):
    """The decoded bytes of each image of a JSON response, after checking their count and type."""
    check(f"{name}: response is ImageGenerationResponse", isinstance(response, components.ImageGenerationResponse), type(response).__name__)
    check(f"{name}: {count} image(s)", len(response.data) == count, f"got {len(response.data)}")
    check(f"{name}: usage reported", response.usage is not None, "usage is missing")
    out = []
    for index, image in enumerate(response.data):
        check(f"{name}: image {index} media_type {media_type}", image.media_type == media_type, f"got {image.media_type!r}")
        out.append(b64_bytes(name, image.b64_json))
    return out


def model_list():
    listing = SDK.images.list_models()
    ids = [model.id for model in listing.data]
    check("models: our model is listed", MODEL in ids, f"listed: {ids}")
    model = next(m for m in listing.data if m.id == MODEL)
    check("models: supported_parameters present", len(model.supported_parameters) > 0, "empty supported_parameters")
    unknown = [k for k, v in model.supported_parameters.items() if getattr(v, "is_unknown", False)]
    check("models: every capability descriptor is enum/range/boolean", not unknown, f"not understood by the SDK: {unknown}")
    check("models: image output", "image" in model.architecture.output_modalities, f"got {model.architecture.output_modalities}")
    check("models: supports_streaming", model.supports_streaming is True, f"got {model.supports_streaming}")
    check("models: endpoints path", model.endpoints.endswith(f"{MODEL}/endpoints"), f"got {model.endpoints!r}")

    author, slug = MODEL.split("/", 1)
    endpoints = SDK.images.list_model_endpoints(author=author, slug=slug)
    check("endpoints: model id", endpoints.id == MODEL, f"got {endpoints.id!r}")
    check("endpoints: at least one endpoint", len(endpoints.endpoints) >= 1, "no endpoints")
    check(
        "endpoints: supported_parameters present",
        all(len(e.supported_parameters) > 0 for e in endpoints.endpoints),
        "an endpoint has no supported_parameters",
    )


def two_webp_images():
    response = generate(n=2, output_format="webp", quality="low", seed=11)
    first, second = images_of("n=2 webp", response, 2, "image/webp")
    sniff("n=2 webp: image 0", first, "image/webp")
    sniff("n=2 webp: image 1", second, "image/webp")
    check("n=2 webp: the two images differ", first != second, "both images are identical")


def seed_determinism():
    a = generate(seed=1234, quality="low", output_format="png")
    b = generate(seed=1234, quality="low", output_format="png")
    c = generate(seed=1235, quality="low", output_format="png")
    (a_png,) = images_of("seed 1234", a, 1, "image/png")
    sniff("seed 1234", a_png, "image/png")
    check("seed: same seed, byte-identical image", a.data[0].b64_json == b.data[0].b64_json, "two runs with seed 1234 differ")
    check("seed: different seed, different image", a.data[0].b64_json != c.data[0].b64_json, "seeds 1234 and 1235 gave the same image")


def jpeg_compression():
    low = generate(seed=7, quality="low", output_format="jpeg", output_compression=10)
    high = generate(seed=7, quality="low", output_format="jpeg", output_compression=95)
    (low_bytes,) = images_of("jpeg q10", low, 1, "image/jpeg")
    (high_bytes,) = images_of("jpeg q95", high, 1, "image/jpeg")
    sniff("jpeg q10", low_bytes, "image/jpeg")
    sniff("jpeg q95", high_bytes, "image/jpeg")
    check("jpeg: q10 is smaller than q95", len(low_bytes) < len(high_bytes), f"q10 {len(low_bytes)} bytes, q95 {len(high_bytes)} bytes")


def resolution_and_aspect_ratio():
    response = generate(resolution="512", aspect_ratio="16:9", quality="low", seed=3, output_format="png")
    (png,) = images_of("512 16:9", response, 1, "image/png")
    width, height = sniff("512 16:9", png, "image/png")
    check("512 16:9: sides are multiples of 8", width % 8 == 0 and height % 8 == 0, f"{width}x{height}")
    ratio = (width / height) / (16 / 9)
    check("512 16:9: ratio within 3% of 16:9", abs(ratio - 1) <= 0.03, f"{width}x{height} is {width / height:.4f}")
    area = width * height / (512 * 512)
    check("512 16:9: area within 15% of 512*512", abs(area - 1) <= 0.15, f"{width}x{height} is {area:.3f} of 512*512")
    check("512 16:9: landscape", width > height, f"{width}x{height}")


def streaming():
    seed = 21
    stream = generate(n=2, seed=seed, quality="low", output_format="png", stream=True)
    check("stream: SDK returned an EventStream", isinstance(stream, EventStream), f"got {type(stream).__name__} (wrong content type?)")
    events = list(stream)
    kinds = [type(e).__name__ for e in events]
    print(f"     events: {kinds}", flush=True)
    for event in events:
        if isinstance(event, components.ImageGenStreamErrorEvent):
            fail("stream: no error event", f"error event: {event.error.message}")
        if getattr(event, "is_unknown", False):
            fail("stream: every event understood by the SDK", f"the SDK could not validate: {event.raw}")
    partials = [e for e in events if isinstance(e, components.ImageGenPartialImageEvent)]
    completed = [e for e in events if isinstance(e, components.ImageGenCompletedEvent)]
    check("stream: partial images sent (default previews)", len(partials) >= 1, "no partial_image events")
    check("stream: one completed event per image", len(completed) == 2, f"{len(completed)} completed events")
    first_completed = next(i for i, e in enumerate(events) if isinstance(e, components.ImageGenCompletedEvent))
    check(
        "stream: partial images come before the completed events",
        all(not isinstance(e, components.ImageGenPartialImageEvent) for e in events[first_completed:]),
        f"order: {kinds}",
    )
    indices = [e.partial_image_index for e in partials]
    check("stream: partial_image_index never decreases", indices == sorted(indices) and indices[0] >= 0, f"indices {indices}")
    for index, partial in enumerate(partials):
        b64_bytes(f"stream: partial {index}", partial.b64_json)
    finals = []
    for index, event in enumerate(completed):
        check(f"stream: completed {index} media_type image/png", event.media_type == "image/png", f"got {event.media_type!r}")
        check(f"stream: completed {index} has usage", event.usage is not None, "usage missing")
        check(f"stream: completed {index} has created", event.created > 0, f"created {event.created}")
        data = b64_bytes(f"stream: completed {index}", event.b64_json)
        sniff(f"stream: completed {index}", data, "image/png")
        finals.append(event.b64_json)
    check("stream: the two final images differ", finals[0] != finals[1], "identical images")

    buffered = generate(n=2, seed=seed, quality="low", output_format="png")
    check(
        "stream: final images equal the non-streamed ones (same seed)",
        sorted(finals) == sorted(image.b64_json for image in buffered.data),
        "streamed and buffered generations differ",
    )


def errors_are_typed():
    expect_error(
        "unknown model",
        lambda: SDK.images.generate(model="nobody/no-such-model", prompt=PROMPT),
        errors.NotFoundResponseError,
        404,
    )
    expect_error(
        "size 1024x1024 with resolution 512",
        lambda: generate(size="1024x1024", resolution="512"),
        errors.BadRequestResponseError,
        400,
        field=("size", "resolution"),
    )
    expect_error("n=11", lambda: generate(n=11), errors.BadRequestResponseError, 400, field="n")
    expect_error(
        "n=11 with stream=true (rejected before the stream starts)",
        lambda: generate(n=11, stream=True),
        errors.BadRequestResponseError,
        400,
        field="n",
    )
    expect_error(
        "background transparent with jpeg",
        lambda: generate(background="transparent", output_format="jpeg"),
        errors.BadRequestResponseError,
        400,
        field="background",
    )
    expect_error(
        "wrong API key",
        lambda: client("not-the-key").images.generate(model=MODEL, prompt=PROMPT),
        errors.UnauthorizedResponseError,
        401,
    )


if __name__ == "__main__":
    run([model_list, two_webp_images, seed_determinism, jpeg_compression, resolution_and_aspect_ratio, streaming, errors_are_typed])
