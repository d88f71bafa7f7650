"""Documents: Markdown and self-contained HTML from one list of blocks, and JSON every reader
takes (no file access).

A block is a tuple: ("h1" | "h2" | "p" | "note", text), ("ul", [items]),
("table", header, rows) or ("fig", name, caption, png bytes). The HTML embeds
every figure as a data URI, so one file carries the whole report.

    >>> render_md([("h1", "Report"), ("table", ["a"], [["1"]])])
"""

from __future__ import annotations

import base64
import html
import json
import math
import re


def md_table(header: list[str], rows: list[list[str]]) -> str:
    cells = [header, ["---"] * len(header)] + rows
    return "\n".join("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in cells)


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    trs = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"


def render_md(blocks: list[tuple]) -> str:
    out = []
    for kind, *a in blocks:
        if kind in ("h1", "h2"):
            out.append(("# " if kind == "h1" else "## ") + a[0])
        elif kind == "p":
            out.append(a[0])
        elif kind == "note":
            out.append("> **Note:** " + a[0])
        elif kind == "ul":
            out.append("\n".join(f"- {x}" for x in a[0]))
        elif kind == "table":
            out.append(md_table(*a))
        elif kind == "fig":
            name, cap, _ = a
            out.append(f"![{name}]({name}.png)\n\n*{cap}* ([SVG]({name}.svg))")
    return "\n\n".join(out) + "\n"


CSS = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
       "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .6em;"
       "text-align:left;vertical-align:top}th{background:#f3f3f3}figure{margin:1.5em 0}"
       "figure img{max-width:100%}figcaption{font-size:.9em;color:#444}"
       ".note{background:#fff6e0;border-left:4px solid #e0a000;padding:.5em 1em}")


def _inline(text: str) -> str:
    """Escaped text with `code` spans."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def render_html(blocks: list[tuple], title: str) -> str:
    out = []
    for kind, *a in blocks:
        if kind in ("h1", "h2"):
            out.append(f"<{kind}>{html.escape(a[0])}</{kind}>")
        elif kind == "p":
            out.append(f"<p>{_inline(a[0])}</p>")
        elif kind == "note":
            out.append(f'<p class="note"><b>Note:</b> {_inline(a[0])}</p>')
        elif kind == "ul":
            out.append("<ul>" + "".join(f"<li>{_inline(x)}</li>" for x in a[0]) + "</ul>")
        elif kind == "table":
            out.append(_html_table(*a))
        elif kind == "fig":
            name, cap, png = a
            src = "data:image/png;base64," + base64.b64encode(png).decode()
            out.append(f'<figure id="{name}"><img src="{src}" alt="{html.escape(name)}">'
                       f"<figcaption>{html.escape(cap)}</figcaption></figure>")
    body = "\n".join(out)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{CSS}</style></head><body>\n{body}\n</body></html>\n")


def json_text(obj) -> str:
    """Indented JSON that every JSON reader takes: a NaN or infinite number is null (Python's json
    writes NaN, which JavaScript's and most others' parsers refuse); numbers as numbers."""
    def finite(x):
        if getattr(x, "shape", None) == () and hasattr(x, "item"):  # a numpy scalar: its Python number
            x = x.item()
        if isinstance(x, float):
            return x if math.isfinite(x) else None
        if isinstance(x, dict):
            return {k: finite(v) for k, v in x.items()}
        return [finite(v) for v in x] if isinstance(x, (list, tuple)) else x
    return json.dumps(finite(obj), indent=2, default=str, allow_nan=False) + "\n"
