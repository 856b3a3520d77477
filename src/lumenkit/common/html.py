"""Small helpers for the HTML pages (demo, evaluation reports): inline images, tables."""
from __future__ import annotations

import base64
import html as _html
from pathlib import Path
from typing import Sequence

import numpy as np


def img_tag(image: np.ndarray | str | Path, *, width: int | None = None, alt: str = "") -> str:
    """An <img> with the picture inlined as a PNG data URI ([H, W, C] float [0, 1] or a file path)."""
    import cv2

    if isinstance(image, (str, Path)):
        data = Path(image).read_bytes()
        mime = "image/gif" if str(image).endswith(".gif") else "image/png" if str(image).endswith(".png") else "image/jpeg"
    else:
        from lumenkit.common.images import to_uint

        arr = image if image.dtype == np.uint8 else to_uint(image, 8)
        if arr.ndim == 3 and arr.shape[2] == 3:
            arr = arr[..., ::-1]
        elif arr.ndim == 3 and arr.shape[2] == 4:
            arr = arr[..., [2, 1, 0, 3]]
        data = cv2.imencode(".png", np.ascontiguousarray(arr))[1].tobytes()
        mime = "image/png"
    w = f' width="{width}"' if width else ""
    return f'<img src="data:{mime};base64,{base64.b64encode(data).decode()}"{w} alt="{_html.escape(alt)}" style="image-rendering:pixelated">'


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def cell(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    head = "".join(f"<th>{_html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def figure(content: str, caption: str) -> str:
    return f"<figure>{content}<figcaption>{_html.escape(caption)}</figcaption></figure>"


def escape(text: str) -> str:
    return _html.escape(text)


PAGE_STYLE = """
body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
h1{border-bottom:2px solid #333}h2{margin-top:2em;border-bottom:1px solid #aaa}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}
th{background:#eee}figure{display:inline-block;margin:6px;vertical-align:top;text-align:center}
figcaption{font-size:85%;color:#555}.note{color:#666;font-size:90%}
"""


def page(title: str, sections: Sequence[str]) -> str:
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{_html.escape(title)}</title>"
        f"<style>{PAGE_STYLE}</style></head><body><h1>{_html.escape(title)}</h1>\n" + "\n".join(sections) + "\n</body></html>\n"
    )
