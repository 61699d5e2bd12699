"""Building blocks of the self-contained report page: inline CSS, PNGs as data URIs, pandas tables, sections.

Nothing on the page loads anything at view time: no external fonts, scripts or style sheets, every image inline.
"""

import base64
import html
import io
from pathlib import Path

import numpy as np
import pandas as pd

from cebench.images import read_rgb
from evaluation.reporting.paper_tables import display_table

JPEG_ABOVE = 300_000  # bytes

CSS = """
:root { --fg: #1d2327; --muted: #5f6b73; --line: #d9dee2; --band: #f5f7f8; --accent: #24598f; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: #fff; line-height: 1.45;
       font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", Arial, sans-serif; }
main { max-width: 1360px; margin: 0 auto; padding: 18px 22px 60px; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 34px 0 10px; padding-bottom: 4px; border-bottom: 2px solid var(--line); }
h3 { font-size: 15px; margin: 20px 0 8px; }
.meta, .note, figcaption { color: var(--muted); font-size: 12.5px; }
nav { margin: 12px 0 0; font-size: 13px; }
nav a { color: var(--accent); text-decoration: none; margin-right: 14px; }
.banner { margin: 14px 0; padding: 10px 14px; border-left: 4px solid #c98a12; background: #fdf6e7; }
.scroll { overflow-x: auto; max-width: 100%; }
table.data { border-collapse: collapse; font-size: 12px; font-variant-numeric: tabular-nums; margin: 4px 0; }
table.data th, table.data td { padding: 4px 7px; border-bottom: 1px solid var(--line); text-align: left;
                               vertical-align: top; }
table.data th { background: var(--band); font-weight: 600; min-width: 3.5em; vertical-align: bottom; }
table.data tbody th { vertical-align: top; white-space: nowrap; }
table.data td:first-child { white-space: nowrap; }
table.data tbody tr:hover { background: #eef3f8; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(min(100%, 380px), 1fr)); gap: 18px; }
.grid.wide { grid-template-columns: repeat(auto-fill, minmax(min(100%, 560px), 1fr)); }
.grid.rows { grid-template-columns: 1fr; }
.cards { display: flex; flex-wrap: wrap; gap: 18px; align-items: flex-start; }
figure { margin: 0; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid var(--line); }
ul.note { margin: 6px 0; padding-left: 18px; }
table.answer tr.better td:last-child { color: #1a7f37; font-weight: 600; }
table.answer tr.worse td:last-child { color: #b42318; font-weight: 600; }
@media (max-width: 640px) {  /* a phone: the answer as one card per comparison, every value under its name */
  main { padding: 12px 10px 40px; }
  table.answer thead { display: none; }
  table.answer, table.answer tbody, table.answer tr, table.answer td { display: block; width: 100%; }
  table.answer tr { border-bottom: 2px solid var(--line); padding: 4px 0; }
  table.answer td { border: 0; padding: 1px 4px; white-space: normal; }
  table.answer td::before { content: attr(data-label) ": "; color: var(--muted); }
}
code { font-size: 12px; background: var(--band); padding: 1px 4px; }
"""


def esc(text):
    return html.escape(str(text))


def _inline(path):
    """(mime type, bytes) of an image for the page: a large PNG (photo grids) is re-encoded as JPEG to keep the
    page small; charts and curves stay PNG."""
    data = Path(path).read_bytes()
    if len(data) <= JPEG_ABOVE:
        return "image/png", data
    buffer = io.BytesIO()
    read_rgb(path)[0].save(buffer, format="JPEG", quality=88)
    return "image/jpeg", buffer.getvalue()


def image(path, caption):
    """A <figure> holding the image inline as a base64 data URI."""
    mime, data = _inline(path)
    src = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
    return f'<figure><img src="{src}" alt="{esc(caption)}"><figcaption>{esc(caption)}</figcaption></figure>'


def grid(figures, kind=""):
    """Figures side by side, as many as fit; kind 'wide': two at laptop width, 'rows': one per row."""
    return f'<div class="grid {kind}">{"".join(figures)}</div>' if figures else ""


def frame(df, index=False):
    """A DataFrame as an HTML table (pandas to_html, escaped, missing values empty)."""
    return f'<div class="scroll">{df.to_html(index=index, na_rep="", border=0, classes="data", escape=True)}</div>'


def answer_table(table, kinds):
    """The answer's rows as an HTML table whose cells carry their column's name (data-label: the phone layout
    shows it before each value); `kinds` gives each row a class (better, worse, open)."""
    head = "".join(f"<th>{esc(c)}</th>" for c in table.columns)
    rows = "".join(f'<tr class="{kind}">' + "".join(f'<td data-label="{esc(c)}">{esc(v)}</td>' for c, v in
                                                   zip(table.columns, row, strict=True)) + "</tr>"
                   for kind, row in zip(kinds, table.itertuples(index=False), strict=True))
    return (f'<div class="scroll"><table class="data answer"><thead><tr>{head}</tr></thead>'
            f"<tbody>{rows}</tbody></table></div>")


def read_table_csv(path):
    """A table CSV of evaluation.tables (or any CSV) -> the DataFrame as the page shows it.

    Columns with '<c> low' and '<c> high' beside them become 'c (ours)' = 'value [low, high]' and 'c (paper)';
    a CSV without them is shown as it is."""
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    columns = [c for c in table.columns if f"{c} low" in table.columns and f"{c} high" in table.columns]
    if not columns or "row" not in table.columns:
        return table.drop(columns=["key"], errors="ignore")
    derived = {f"{c} {s}" for c in columns for s in ("low", "high", "runs", "complete", "paper")} | set(columns)
    text = [c for c in table.columns if c not in derived and c not in ("key", "row")
            and not any(c.startswith(f"{col} paper:") for col in columns)]  # published beside ours, not text
    for col in columns:
        for name in (col, f"{col} low", f"{col} high", f"{col} paper"):
            table[name] = pd.to_numeric(table[name], errors="coerce") if name in table else np.nan
    shown = display_table(table, columns, text)
    ours = [c for c in shown.columns if c.endswith(("↑", "↓"))]  # the '<c> (ours) ↑' columns
    shown[ours] = shown[ours].apply(lambda s: s.str.replace(" ", "\u00a0"))  # 'v [low, high]' never breaks
    return shown


def markdown_notes(path):
    """(title, note lines) of a table's .md: its '# ' heading and the text under the table."""
    if not Path(path).is_file():
        return None, []
    lines = Path(path).read_text().splitlines()
    title = next((ln[2:] for ln in lines if ln.startswith("# ")), None)
    notes = [ln for ln in lines if ln.strip() and not ln.startswith(("# ", "|"))]
    return title, notes


def notes_html(lines):
    """Note lines as paragraphs, '- ' lines as a list."""
    out, items = [], []
    for line in [*lines, ""]:
        if line.startswith("- "):
            items.append(f"<li>{esc(line[2:])}</li>")
            continue
        if items:
            out.append(f'<ul class="note">{"".join(items)}</ul>')
            items = []
        if line:
            out.append(f'<p class="note">{esc(line)}</p>')
    return "".join(out)


def section(anchor, title, body, empty):
    """<section> with its heading; `empty` is said when there is no body."""
    return f'<section id="{anchor}"><h2>{esc(title)}</h2>{body or f"<p class=note>{esc(empty)}</p>"}</section>'


def page(title, subtitle, banner, sections):
    """The whole document: sections as (anchor, title, html) with a table of contents."""
    nav = "".join(f'<a href="#{a}">{esc(t)}</a>' for a, t, _ in sections)
    body = "".join(html_ for _, _, html_ in sections)
    banner = f'<div class="banner">{esc(banner)}</div>' if banner else ""
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{esc(title)}</title>'
            f"<style>{CSS}</style></head><body><main><header><h1>{esc(title)}</h1>"
            f'<p class="meta">{esc(subtitle)}</p><nav>{nav}</nav></header>{banner}{body}</main></body></html>\n')
