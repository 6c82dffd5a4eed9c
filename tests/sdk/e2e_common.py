"""Shared by the SDK end-to-end scripts: settings from the environment, one-line checks, and
stdlib-only image sniffing (PNG fully decoded with zlib; WebP and JPEG headers parsed)."""

import base64
import os
import re
import struct
import sys
import traceback
import zlib


def setting(name):
    value = os.environ.get(name, "").strip()
    if not value:
        print(f"FAIL setup: environment variable {name} is not set", flush=True)
        sys.exit(2)
    return value


def settings():
    """(base URL without a trailing slash, API key, model id)."""
    return (
        setting("IMAGO_E2E_BASE_URL").rstrip("/"),
        setting("IMAGO_E2E_API_KEY"),
        setting("IMAGO_E2E_MODEL"),
    )


def fail(name, detail):
    print(f"FAIL {name}: {detail}", flush=True)
    sys.exit(1)


def check(name, condition, detail):
    """One line per check; the first failure ends the script with status 1."""
    if not condition:
        fail(name, detail)
    print(f"ok   {name}", flush=True)


def shorten(text, limit=4000):
    """`text` with base64 runs elided and its length capped, so image data never floods a log."""
    text = re.sub(r"[A-Za-z0-9+/=]{120,}", lambda m: f"<{len(m.group(0))} base64 chars>", str(text))
    return text if len(text) <= limit else text[:limit] + f"... ({len(text) - limit} more chars)"


def run(checks):
    """Runs each check function in order; an unexpected exception fails the check it came from."""
    for check_fn in checks:
        try:
            check_fn()
        except SystemExit:
            raise
        except Exception as error:  # an SDK error we did not expect: show what the server said
            print(shorten(traceback.format_exc()), flush=True)
            body = getattr(error, "body", None)
            detail = f"{type(error).__name__}: {error}" + (f" (body: {body})" if body else "")
            fail(check_fn.__name__, shorten(detail))
    print("all checks passed", flush=True)


def expect_error(name, call, error_type, status, field=None):
    """`call` must raise `error_type` carrying HTTP `status`; with `field` (a name or a tuple of
    names), the message must name one of them. Returns the exception."""
    try:
        call()
    except error_type as error:
        got = getattr(error, "status_code", None)
        check(f"{name}: HTTP {status}", got == status, f"{error_type.__name__} with status {got}: {error}")
        message = str(getattr(error, "message", "") or error)
        if field is not None:
            fields = (field,) if isinstance(field, str) else tuple(field)
            check(
                f"{name}: message names {' or '.join(fields)}",
                any(re.search(rf"\b{re.escape(f)}\b", message) for f in fields),
                f"message: {message!r}",
            )
        return error
    except Exception as error:
        fail(name, shorten(f"expected {error_type.__name__} (HTTP {status}), got {type(error).__name__}: {error}"))
    fail(name, f"expected {error_type.__name__} (HTTP {status}), but the call succeeded")


def b64_bytes(name, text):
    try:
        return base64.b64decode(text, validate=True)
    except Exception as error:
        fail(name, f"b64_json is not valid base64: {error}")


# --- PNG -------------------------------------------------------------------------------------

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def png_size(data):
    """(width, height) of a PNG after checking every chunk's CRC and inflating the pixel data to
    exactly the size IHDR promises; raises ValueError otherwise."""
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError(f"not a PNG (starts with {data[:8]!r})")
    pos, header, idat, ended = len(PNG_SIGNATURE), None, bytearray(), False
    while pos + 8 <= len(data) and not ended:
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        crc_bytes = data[pos + 8 + length : pos + 12 + length]
        if len(body) != length or len(crc_bytes) != 4:
            raise ValueError(f"chunk {kind!r} truncated")
        if zlib.crc32(kind + body) != struct.unpack(">I", crc_bytes)[0]:
            raise ValueError(f"chunk {kind!r} has a bad CRC")
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            ended = True
        pos += 12 + length
    if header is None or not ended:
        raise ValueError("missing IHDR or IEND")
    width, height, depth, color, _, _, interlace = header
    if color not in PNG_CHANNELS or depth != 8 or interlace != 0:
        raise ValueError(f"unexpected PNG layout: depth {depth}, color type {color}, interlace {interlace}")
    raw = zlib.decompress(bytes(idat))
    expected = height * (1 + width * PNG_CHANNELS[color])
    if len(raw) != expected:
        raise ValueError(f"pixel data is {len(raw)} bytes, {width}x{height} needs {expected}")
    return width, height


# --- WebP ------------------------------------------------------------------------------------


def webp_size(data):
    """(width, height) from a RIFF/WEBP header (VP8, VP8L or VP8X); raises ValueError otherwise."""
    if len(data) < 30 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        raise ValueError(f"not a WebP (starts with {data[:12]!r})")
    (riff_size,) = struct.unpack("<I", data[4:8])
    if riff_size + 8 != len(data):
        raise ValueError(f"RIFF size {riff_size} + 8 != file size {len(data)}")
    chunk = data[12:16]
    if chunk == b"VP8 ":
        if data[23:26] != b"\x9d\x01\x2a":
            raise ValueError("VP8 start code missing")
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":
        if data[20] != 0x2F:
            raise ValueError("VP8L signature missing")
        (bits,) = struct.unpack("<I", data[21:25])
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return width, height
    raise ValueError(f"unknown WebP chunk {chunk!r}")


# --- JPEG ------------------------------------------------------------------------------------


def jpeg_size(data):
    """(width, height) from the first SOF segment; raises ValueError otherwise."""
    if not data.startswith(b"\xff\xd8\xff") or not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        raise ValueError(f"not a complete JPEG (starts with {data[:4]!r}, ends with {data[-2:]!r})")
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise ValueError(f"bad JPEG marker at {pos}")
        marker = data[pos + 1]
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return width, height
        pos += 2 + length
    raise ValueError("no SOF segment")


def sniff(name, data, media_type):
    """Checks the bytes are a well-formed image of `media_type`; returns (width, height)."""
    reader = {"image/png": png_size, "image/webp": webp_size, "image/jpeg": jpeg_size}[media_type]
    try:
        size = reader(data)
    except ValueError as error:
        fail(name, f"not a valid {media_type}: {error}")
    check(f"{name}: decodes as {media_type} ({size[0]}x{size[1]})", size[0] > 0 and size[1] > 0, f"size {size}")
    return size
