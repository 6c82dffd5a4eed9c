"""The playground page in headless Chromium (Debian's, driven by Playwright), as a new user tries
it against `imago serve`: enter the API key, generate and watch the previews then the final image,
restore settings from the history, stop a long generation, see server errors (an HTTP error
envelope, and an `error` event in a stream that had started). Run by
tests/playground.rs, which sets:

IMAGO_E2E_BASE_URL, IMAGO_E2E_API_KEY, IMAGO_E2E_MODEL  the server under test
IMAGO_E2E_BROKEN_MODEL                                 a served model whose generations fail
IMAGO_E2E_CHROMIUM                                     the browser executable
IMAGO_E2E_SCREENSHOT                                   where to write the screenshot (PNG)

One line per check; the first failure ends the script with status 1."""

import json
import os
import re
import sys
import time
import traceback
import urllib.error
import urllib.request

from playwright.sync_api import sync_playwright

# Status texts of the page (`#status[data-state]`).
DONE, STOPPED, ERROR, RUNNING = "done", "stopped", "error", "running"
# A preview-to-final generation of the tiny model takes a few seconds; the long one minutes.
GENERATION_TIMEOUT_MS = 180_000
# After Stop, the worker finishes at most the step it is on: a small request then completes well
# before the 50-step 512x512 job would have.
FOLLOW_UP_LIMIT_S = 30.0


def setting(name):
    value = os.environ.get(name, "").strip()
    if not value:
        print(f"FAIL setup: environment variable {name} is not set", flush=True)
        sys.exit(2)
    return value


BASE = setting("IMAGO_E2E_BASE_URL").rstrip("/")
KEY = setting("IMAGO_E2E_API_KEY")
MODEL = setting("IMAGO_E2E_MODEL")
BROKEN_MODEL = setting("IMAGO_E2E_BROKEN_MODEL")
CHROMIUM = setting("IMAGO_E2E_CHROMIUM")
SCREENSHOT = setting("IMAGO_E2E_SCREENSHOT")


def fail(name, detail):
    print(f"FAIL {name}: {detail}", flush=True)
    sys.exit(1)


def check(name, condition, detail=""):
    if not condition:
        fail(name, detail)
    print(f"ok   {name}", flush=True)


def api(path, body=None):
    """(status, parsed JSON or text) of a direct API call, for comparing with what the page shows."""
    request = urllib.request.Request(
        BASE + path,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            status, text = response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read().decode()
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def cancelled_total():
    status, text = api("/metrics")
    match = re.search(r"^imago_cancelled_total (\d+)", text if isinstance(text, str) else "", re.M)
    if status != 200 or not match:
        fail("metrics", f"GET /metrics: {status} {str(text)[:200]}")
    return int(match.group(1))


def wait_state(page, states, timeout=GENERATION_TIMEOUT_MS):
    """Waits until the status is in one of `states`, returns it."""
    selector = ", ".join(f'#status[data-state="{s}"]' for s in states)
    page.wait_for_selector(selector, timeout=timeout)
    return page.get_attribute("#status", "data-state")


def set_size(page, width, height):
    page.select_option("#size-mode", "pixels")
    page.fill("#width", str(width))
    page.fill("#height", str(height))


def generate(page):
    """Clicks Generate and waits for the run to end; returns (state, seconds)."""
    started = time.monotonic()
    page.click("#generate")
    state = wait_state(page, [DONE, STOPPED, ERROR])
    return state, time.monotonic() - started


def main():
    console_errors, page_errors, outside = [], [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            # Root in a container: Chromium's sandbox needs user namespaces it may not have.
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("pageerror", lambda e: page_errors.append(str(e)))
        page.on(
            "console",
            lambda m: console_errors.append(m.text) if m.type == "error" else None,
        )

        # The page works offline: every request it makes goes to this server.
        def only_this_server(route):
            if route.request.url.startswith(BASE + "/") or route.request.url.startswith(("data:", "blob:")):
                route.continue_()
            else:
                outside.append(route.request.url)
                route.abort()

        page.route("**/*", only_this_server)

        response = page.goto(BASE + "/")
        check("page loads", response is not None and response.status == 200, f"{response and response.status}")
        check("title", page.title() == "imago playground", page.title())

        # The server requires a key: the page says so, and works once it is given.
        state = wait_state(page, ["needs-key"], timeout=30_000)
        check("asks for the API key", state == "needs-key", state)
        check("key field shown", page.is_visible("#api-key"))
        page.fill("#api-key", KEY)
        page.click("#key-save")
        page.wait_for_selector(f'#model option[value="{MODEL}"]', state="attached", timeout=30_000)
        wait_state(page, ["idle"], timeout=30_000)
        check("models listed", page.eval_on_selector("#model", "s => s.value") == MODEL)
        check("key kept in local storage",
              page.evaluate("() => localStorage.getItem('imago.playground.apiKey')") == KEY)
        formats = page.eval_on_selector_all("#format option", "os => os.map(o => o.value)")
        check("formats from the model listing", formats == ["png", "jpeg", "webp"], str(formats))
        check("error cleared", page.is_hidden("#error"))

        # Record every state the first image slot goes through.
        page.evaluate("""() => {
            window.slotStates = [];
            new MutationObserver(() => {
                const slot = document.querySelector('#results figure[data-index="0"]');
                if (slot && window.slotStates.at(-1) !== slot.dataset.state) window.slotStates.push(slot.dataset.state);
            }).observe(document.getElementById('results'), {subtree: true, childList: true, attributes: true});
        }""")

        # 1. Generate: previews as they arrive, then the final image.
        page.fill("#prompt", "a lighthouse at dusk, oil painting")
        set_size(page, 256, 256)
        page.fill("#steps", "8")
        check("seed random by default", page.is_checked("#seed-random") and page.is_disabled("#seed"))
        state, seconds = generate(page)
        check("generation done", state == DONE,
              f"{state}: {page.text_content('#status')} {page.text_content('#error')}")
        states = page.evaluate("() => window.slotStates")
        check("a preview shown before the final image",
              "partial" in states and states.index("partial") < states.index("final"), str(states))
        previews = page.locator("#previews figure").count()
        check("every preview kept (3 requested)", previews == 3, f"{previews} previews")
        final = page.locator('#results figure[data-state="final"] img')
        check("one final image", final.count() == 1, f"{final.count()}")
        size = final.evaluate("img => [img.naturalWidth, img.naturalHeight]")
        check("final image decoded at the requested size", size == [256, 256], str(size))
        status = page.text_content("#status")
        first_ms = int(page.get_attribute("#status", "data-first-preview-ms"))
        total_ms = int(page.get_attribute("#status", "data-total-ms"))
        check("timings shown", "first preview" in status and "total" in status and 0 < first_ms < total_ms,
              f"{status!r} first={first_ms} total={total_ms}")
        seed_match = re.search(r"seed (\d+)", status)
        check("used seed shown", seed_match is not None, status)
        seed = seed_match.group(1)
        print(f"     generated in {seconds:.1f} s: {status}", flush=True)
        download = page.get_attribute("#results a.download", "download")
        check("download button", download == f"imago-{seed}-0.png", str(download))
        check("history has the image", page.locator("#history .history-item").count() == 1)
        page.evaluate("() => window.scrollTo(0, 0)")
        page.screenshot(path=SCREENSHOT, full_page=True)
        check("screenshot written", os.path.getsize(SCREENSHOT) > 10_000, SCREENSHOT)

        # 2. The history restores the settings, seed included.
        page.fill("#prompt", "something else")
        page.fill("#steps", "2")
        page.click("#history .history-item button.restore")
        check("prompt restored", page.input_value("#prompt") == "a lighthouse at dusk, oil painting")
        check("steps restored", page.input_value("#steps") == "8")
        check("seed restored", page.input_value("#seed") == seed and not page.is_checked("#seed-random"),
              f"{page.input_value('#seed')} random={page.is_checked('#seed-random')}")

        # The same settings as a batch of two in WebP: both slots end final, the seed is the one asked.
        page.fill("#n", "2")
        page.select_option("#format", "webp")
        state, _ = generate(page)
        check("batch done", state == DONE, f"{state}: {page.text_content('#error')}")
        finals = page.locator('#results figure[data-state="final"]').count()
        check("two final images", finals == 2, f"{finals}")
        check("seed honoured", f"seed {seed}" in page.text_content("#status"), page.text_content("#status"))
        check("webp download", page.get_attribute('#results figure[data-index="1"] a.download', "download")
              == f"imago-{seed}-1.webp")
        check("history has three images", page.locator("#history .history-item").count() == 3)

        # 3. Stop a long generation: the page returns to idle and the server frees the worker.
        before = cancelled_total()
        page.fill("#n", "1")
        page.select_option("#format", "png")
        page.check("#seed-random")
        set_size(page, 512, 512)
        page.fill("#steps", "50")
        page.click("#generate")
        page.wait_for_function(
            "() => document.getElementById('status').textContent.includes('seed')", timeout=60_000)
        check("stop enabled while running", page.is_enabled("#stop") and page.is_disabled("#generate"))
        time.sleep(1.5)
        page.click("#stop")
        state = wait_state(page, [DONE, STOPPED, ERROR], timeout=10_000)
        check("stopped", state == STOPPED, f"{state}: {page.text_content('#status')}")
        check("idle again", page.is_enabled("#generate") and page.is_disabled("#stop"))
        check("no error shown for a stop", page.is_hidden("#error"), page.text_content("#error"))
        set_size(page, 64, 64)
        page.fill("#steps", "1")
        state, seconds = generate(page)
        check("a following generation succeeds quickly", state == DONE and seconds < FOLLOW_UP_LIMIT_S,
              f"{state} after {seconds:.1f} s: {page.text_content('#error')}")
        check("the server cancelled the stopped job", cancelled_total() == before + 1,
              f"imago_cancelled_total {before} -> {cancelled_total()}")

        # 4. A server error is shown with the server's message.
        set_size(page, 4096, 4096)
        state, _ = generate(page)
        check("error state", state == ERROR, state)
        shown = page.text_content("#error")
        status, body = api("/api/v1/images", {"model": MODEL, "prompt": "x", "size": "4096x4096"})
        message = body["error"]["message"] if isinstance(body, dict) else str(body)
        check("the server refuses the size", status == 400, f"{status} {body}")
        check("server message shown", page.is_visible("#error") and message in shown and "HTTP 400" in shown,
              f"shown {shown!r}, server said {message!r}")
        check("idle after the error", page.is_enabled("#generate") and page.is_disabled("#stop"))

        # 5. An `error` event in a stream that had started is shown with its message too.
        page.select_option("#model", BROKEN_MODEL)
        set_size(page, 64, 64)
        page.fill("#steps", "1")
        page.fill("#guidance", "0")
        state, _ = generate(page)
        check("stream error state", state == ERROR, f"{state}: {page.text_content('#status')}")
        shown = page.text_content("#error")
        status, events = api("/api/v1/images", {
            "model": BROKEN_MODEL, "prompt": "x", "size": "64x64", "stream": True,
            "provider": {"options": {"local": {"steps": 1, "guidance_scale": 0}}},
        })
        error_events = [
            json.loads(line[len("data: "):]) for line in str(events).splitlines()
            if line.startswith("data: {") and '"type":"error"' in line
        ]
        check("the server streams an error event", status == 200 and len(error_events) == 1,
              f"{status} {str(events)[:300]}")
        message = error_events[0]["error"]["message"]
        check("stream error message shown", page.is_visible("#error") and message in shown,
              f"shown {shown!r}, server said {message!r}")
        check("idle after the stream error", page.is_enabled("#generate") and page.is_disabled("#stop"))

        # A client-side check before anything is sent: a seed that is not a number.
        page.uncheck("#seed-random")
        page.fill("#seed", "12abc")
        page.click("#generate")
        check("bad seed explained", "Seed:" in page.text_content("#error"), page.text_content("#error"))

        browser.close()

    check("no request left this server", not outside, str(outside))
    check("no script errors", not page_errors, str(page_errors))
    # The 401 and 400 answers above are logged by Chromium as failed loads; anything else is a bug
    # (a Content-Security-Policy violation, for one).
    unexpected = [e for e in console_errors if "Failed to load resource" not in e]
    check("no console errors", not unexpected, str(unexpected))
    print("passed", flush=True)


if __name__ == "__main__":
    try:
        main()
    except SystemExit:
        raise
    except Exception:
        traceback.print_exc()
        fail("unexpected exception", "see the traceback above")
