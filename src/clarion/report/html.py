"""Assemble the single-file HTML page: every text escaped, every image an inline PNG data URI."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from typing import Any

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1200px;
       padding: 0 1rem; color: #222; background: #fff; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.25rem; border-bottom: 1px solid #ddd; padding-bottom: .2rem; margin-top: 2rem; }
.note { color: #666; font-style: italic; }
.figures { display: flex; flex-wrap: wrap; gap: 1rem; }
figure { margin: 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: .85rem; color: #555; }
table { border-collapse: collapse; font-size: .9rem; }
th, td { border: 1px solid #ccc; padding: .25rem .6rem; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f4f4f4; }
footer { margin-top: 3rem; font-size: .8rem; color: #888; }
details { margin: .6rem 0; } summary { cursor: pointer; color: #333; }
"""


@dataclass
class Image:
    png: bytes
    alt: str
    caption: str = ""


@dataclass
class Table:
    headers: list[str]
    rows: list[list[Any]]


@dataclass
class Section:
    """A report section: a heading, optional text, figures, a table and a collapsed table (a
    ``<details>`` element opened by clicking ``details_summary``). With ``note`` and nothing else,
    the section stands for data that was not there (one line saying why)."""

    title: str
    anchor: str
    text: str = ""
    images: list[Image] = field(default_factory=list)
    table: Table | None = None
    note: str = ""
    details: Table | None = None
    details_summary: str = "details"


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _cell(value: Any) -> str:
    if value is None:
        return "<td>–</td>"
    if isinstance(value, float):
        return f'<td class="num">{value:.3f}</td>'
    if isinstance(value, int) and not isinstance(value, bool):
        return f'<td class="num">{value}</td>'
    return f"<td>{html.escape(str(value))}</td>"


def render_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.headers)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>\n" for row in table.rows)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>"


def render_section(section: Section) -> str:
    parts = [f'<section id="{html.escape(section.anchor)}">', f"<h2>{html.escape(section.title)}</h2>"]
    if section.text:
        parts.append(f"<p>{html.escape(section.text)}</p>")
    if section.note:
        parts.append(f'<p class="note">{html.escape(section.note)}</p>')
    if section.images:
        parts.append('<div class="figures">')
        for image in section.images:
            caption = f"<figcaption>{html.escape(image.caption)}</figcaption>" if image.caption else ""
            parts.append(f'<figure><img src="{data_uri(image.png)}" alt="{html.escape(image.alt)}">{caption}</figure>')
        parts.append("</div>")
    if section.table is not None:
        parts.append(render_table(section.table))
    if section.details is not None:
        parts.append(f"<details>\n<summary>{html.escape(section.details_summary)}</summary>\n{render_table(section.details)}\n</details>")
    parts.append("</section>")
    return "\n".join(parts)


def render_page(title: str, sections: list[Section], intro: str = "", footer: str = "") -> str:
    """The whole page. It loads nothing: no scripts, no stylesheets, no fonts, no remote images."""
    toc = "".join(f'<li><a href="#{html.escape(s.anchor)}">{html.escape(s.title)}</a></li>' for s in sections)
    body = "\n".join(render_section(s) for s in sections)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n" + (f"<p>{html.escape(intro)}</p>\n" if intro else "")
        + f"<nav><ul>{toc}</ul></nav>\n{body}\n"
        + (f"<footer>{html.escape(footer)}</footer>\n" if footer else "")
        + "</body>\n</html>\n"
    )
