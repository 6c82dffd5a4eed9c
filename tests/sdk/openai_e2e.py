"""The official OpenAI Python SDK against `imago serve`'s OpenAI alias, used exactly as a user would.

Environment: IMAGO_E2E_BASE_URL (http://127.0.0.1:PORT), IMAGO_E2E_API_KEY, IMAGO_E2E_MODEL.
Prints one line per check; exits 1 at the first failure."""

import openai
from openai import OpenAI
from openai.types import (
    ImageEditCompletedEvent,
    ImageEditPartialImageEvent,
    ImageGenCompletedEvent,
    ImageGenPartialImageEvent,
    ImagesResponse,
)

from e2e_common import b64_bytes, check, expect_error, run, settings, sniff

BASE, KEY, MODEL = settings()
PROMPT = "a lighthouse on a cliff at dusk"


def client(api_key=KEY):
    # Strict validation makes the SDK check every response against its own models (it only
    # constructs them loosely by default); no retries so a 5xx shows at once.
    return OpenAI(base_url=BASE + "/v1", api_key=api_key, max_retries=0, timeout=600, _strict_response_validation=True)


SDK = client()


def generate(**kwargs):
    return SDK.images.generate(model=MODEL, prompt=PROMPT, **kwargs)


def images_of(name, response, count):
    check(f"{name}: response is ImagesResponse", isinstance(response, ImagesResponse), type(response).__name__)
    check(f"{name}: {count} image(s)", response.data is not None and len(response.data) == count, f"data: {response.data}")
    check(f"{name}: usage reported", response.usage is not None, "usage is missing")
    out = []
    for index, image in enumerate(response.data):
        check(f"{name}: image {index} has b64_json", bool(image.b64_json), "b64_json missing")
        out.append(b64_bytes(name, image.b64_json))
    return out


def reported_size(name, response_size, width, height):
    check(f"{name}: reported size is {width}x{height}", response_size == f"{width}x{height}", f"reported {response_size!r}")


def model_list():
    models = list(SDK.models.list())
    ids = [model.id for model in models]
    check("models: our model is listed", MODEL in ids, f"listed: {ids}")
    model = next(m for m in models if m.id == MODEL)
    check("models: object is 'model'", model.object == "model", f"got {model.object!r}")


def two_webp_images():
    response = generate(n=2, output_format="webp", quality="low")
    first, second = images_of("n=2 webp", response, 2)
    width, height = sniff("n=2 webp: image 0", first, "image/webp")
    sniff("n=2 webp: image 1", second, "image/webp")
    check("n=2 webp: the two images differ", first != second, "both images are identical")
    check("n=2 webp: output_format reported", response.output_format == "webp", f"got {response.output_format!r}")
    reported_size("n=2 webp", response.size, width, height)


def jpeg_compression():
    low = generate(output_format="jpeg", output_compression=10, quality="low")
    high = generate(output_format="jpeg", output_compression=95, quality="low")
    (low_bytes,) = images_of("jpeg q10", low, 1)
    (high_bytes,) = images_of("jpeg q95", high, 1)
    sniff("jpeg q10", low_bytes, "image/jpeg")
    sniff("jpeg q95", high_bytes, "image/jpeg")
    check("jpeg: output_format reported", low.output_format == "jpeg", f"got {low.output_format!r}")
    check("jpeg: q10 is smaller than q95", len(low_bytes) < len(high_bytes), f"q10 {len(low_bytes)} bytes, q95 {len(high_bytes)} bytes")


def explicit_size():
    # No quality or background given: the response must still validate (OpenAI's ImagesResponse
    # allows no "auto" there, so the server reports what it used).
    response = generate(size="320x192")
    (png,) = images_of("size 320x192", response, 1)
    width, height = sniff("size 320x192", png, "image/png")
    check("size 320x192: exact pixels", (width, height) == (320, 192), f"got {width}x{height}")
    reported_size("size 320x192", response.size, width, height)
    check("size 320x192: output_format png by default", response.output_format in (None, "png"), f"got {response.output_format!r}")


def streaming():
    stream = generate(n=2, stream=True, partial_images=2, output_format="png", quality="low")
    events = list(stream)
    kinds = [type(e).__name__ for e in events]
    print(f"     events: {kinds}", flush=True)
    unknown = [k for k in kinds if k not in ("ImageGenPartialImageEvent", "ImageGenCompletedEvent")]
    check("stream: only partial_image and completed events", not unknown, f"unexpected: {unknown}")
    partials = [e for e in events if isinstance(e, ImageGenPartialImageEvent)]
    completed = [e for e in events if isinstance(e, ImageGenCompletedEvent)]
    check("stream: partial images sent (partial_images=2)", 1 <= len(partials) <= 4, f"{len(partials)} partial events")
    check("stream: image_generation.completed per image", len(completed) == 2, f"{len(completed)} completed events")
    first_completed = next(i for i, e in enumerate(events) if isinstance(e, ImageGenCompletedEvent))
    check(
        "stream: partial images come before the completed events",
        all(not isinstance(e, ImageGenPartialImageEvent) for e in events[first_completed:]),
        f"order: {kinds}",
    )
    indices = [e.partial_image_index for e in partials]
    check("stream: partial_image_index never decreases", indices == sorted(indices) and indices[0] >= 0, f"indices {indices}")
    for index, partial in enumerate(partials):
        b64_bytes(f"stream: partial {index}", partial.b64_json)
    for index, event in enumerate(completed):
        check(f"stream: completed {index} type", event.type == "image_generation.completed", f"got {event.type!r}")
        check(f"stream: completed {index} output_format png", event.output_format == "png", f"got {event.output_format!r}")
        check(f"stream: completed {index} created_at", event.created_at > 0, f"created_at {event.created_at}")
        data = b64_bytes(f"stream: completed {index}", event.b64_json)
        width, height = sniff(f"stream: completed {index}", data, "image/png")
        reported_size(f"stream: completed {index}", event.size, width, height)
    check("stream: the two final images differ", completed[0].b64_json != completed[1].b64_json, "identical images")


def streaming_exact_partials():
    # One image, partial_images=2 on a 2-step generation: exactly 2 previews, then the image.
    events = list(generate(n=1, stream=True, partial_images=2, quality="low", size="64x64"))
    kinds = [e.type for e in events]
    check(
        "stream n=1: exactly 2 partial images then image_generation.completed",
        kinds == ["image_generation.partial_image", "image_generation.partial_image", "image_generation.completed"],
        f"events: {kinds}",
    )


def edits():
    # The input: a PNG the server itself made, sent as a multipart file the way users upload one.
    source = b64_bytes("edit input", generate(size="64x64", output_format="png", quality="low").data[0].b64_json)
    response = SDK.images.edit(model=MODEL, image=("input.png", source, "image/png"), prompt=PROMPT, size="64x64", n=2)
    edited = images_of("edit n=2", response, 2)
    for index, data in enumerate(edited):
        width, height = sniff(f"edit n=2: image {index}", data, "image/png")
        check(f"edit n=2: image {index} is 64x64", (width, height) == (64, 64), f"got {width}x{height}")
    check("edit n=2: the two images differ", edited[0] != edited[1], "identical images")
    check("edit: the output is not the input", edited[0] != source, "the edit returned its input")
    stream = SDK.images.edit(
        model=MODEL, image=[("input.png", source, "image/png")], prompt=PROMPT, size="64x64", stream=True, partial_images=1
    )
    events = list(stream)
    kinds = [type(e).__name__ for e in events]
    check("edit stream: partial then completed", kinds and kinds[-1] == "ImageEditCompletedEvent", f"events: {kinds}")
    check(
        "edit stream: only image_edit events",
        all(isinstance(e, (ImageEditPartialImageEvent, ImageEditCompletedEvent)) for e in events),
        f"events: {kinds}",
    )
    expect_error(
        "edit with a mask",
        lambda: SDK.images.edit(model=MODEL, image=("a.png", source, "image/png"), mask=("m.png", source, "image/png"), prompt=PROMPT),
        openai.BadRequestError,
        400,
        field="mask",
    )


def errors_are_typed():
    def expect_envelope(name, error):
        body = error.body
        check(
            f"{name}: OpenAI error envelope",
            isinstance(body, dict) and isinstance(body.get("message"), str) and "type" in body,
            f"error body {body!r}",
        )

    error = expect_error(
        "unknown model",
        lambda: SDK.images.generate(model="nobody/no-such-model", prompt=PROMPT),
        openai.NotFoundError,
        404,
    )
    expect_envelope("unknown model", error)
    error = expect_error("n=11", lambda: generate(n=11), openai.BadRequestError, 400, field="n")
    expect_envelope("n=11", error)
    expect_error(
        "n=11 with stream=True (rejected before the stream starts)",
        lambda: generate(n=11, stream=True),
        openai.BadRequestError,
        400,
        field="n",
    )
    expect_error(
        "background transparent with jpeg",
        lambda: generate(background="transparent", output_format="jpeg"),
        openai.BadRequestError,
        400,
        field="background",
    )
    expect_error(
        "response_format url (no hosted files)",
        lambda: generate(response_format="url"),
        openai.BadRequestError,
        400,
        field="response_format",
    )
    expect_error(
        "wrong API key",
        lambda: client("not-the-key").images.generate(model=MODEL, prompt=PROMPT),
        openai.AuthenticationError,
        401,
    )


if __name__ == "__main__":
    run([model_list, two_webp_images, jpeg_compression, explicit_size, streaming, streaming_exact_partials, edits, errors_are_typed])
