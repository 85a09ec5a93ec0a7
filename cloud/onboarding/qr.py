"""QR rendering (error correction M, docs/design.md). PNG work runs off the event loop."""

import asyncio
import base64
import io

import qrcode
import qrcode.image.svg
from qrcode.constants import ERROR_CORRECT_M


def _make(text: str) -> qrcode.QRCode:
    code = qrcode.QRCode(error_correction=ERROR_CORRECT_M, box_size=8, border=4)
    code.add_data(text)
    code.make(fit=True)
    return code


def _render(text: str) -> tuple[str, str]:
    png = io.BytesIO()
    _make(text).make_image().save(png, format="PNG")
    svg = (
        _make(text)
        .make_image(image_factory=qrcode.image.svg.SvgPathImage)
        .to_string(encoding="unicode")
    )
    return "data:image/png;base64," + base64.b64encode(png.getvalue()).decode(), svg


async def render(text: str) -> tuple[str, str]:
    """Return (PNG data URL, SVG document) of a QR code holding ``text``."""
    return await asyncio.to_thread(_render, text)
