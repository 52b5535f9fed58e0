"""`minigpt report --run DIR`: one self-contained report.html for a run, images embedded.

Sections: summary figures, configuration and environment, loss and learning-rate curves,
the reading of the curve (minigpt.diagnostics.reading: what it shows, with remedies), gradient
flow, attention snapshots, samples at several steps, and the computation graph.
Everything is read from the run folder; a section whose files are missing says so. Every text
a run produced (samples, the configuration, file names) is escaped: a corpus full of `<script>`
puts nothing into the page.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

from minigpt.console import count, fmt, visible
from minigpt.diagnostics.plots import run_curves
from minigpt.diagnostics.reading import read_curve, run_facts
from minigpt.errors import MiniGPTError, shell_path
from minigpt.files import (
    atomic_write_text,
    folder_holds,
    jsonl_rows,
    lock_holder,
    printable,
    read_jsonl,
)

STYLE = """
body { font: 15px/1.5 system-ui, sans-serif; color: #1d2330; background: #f6f7f9; margin: 0; }
main { max-width: 1100px; margin: 0 auto; padding: 24px; }
h1 { margin: 0 0 4px; } h2 { margin-top: 32px; border-bottom: 1px solid #d5d9e0; }
section { background: white; border-radius: 8px; padding: 4px 20px 16px; margin: 16px 0;
          box-shadow: 0 1px 3px rgba(0,0,0,.08); }
table { border-collapse: collapse; } td, th { padding: 3px 12px 3px 0; text-align: left; }
th { color: #5a6272; font-weight: 500; } td.num { font-variant-numeric: tabular-nums; }
img { max-width: 100%; height: auto; display: block; margin: 8px 0; }
pre { background: #f0f2f5; padding: 12px; border-radius: 6px; white-space: pre-wrap;
      overflow-wrap: anywhere; }
.grid { display: grid; gap: 12px;
        grid-template-columns: repeat(auto-fit, minmax(min(460px, 100%), 1fr)); }
.muted { color: #6b7280; } nav a { margin-right: 14px; }
"""

def image_tag(path: Path, alt: str) -> str:
    return embedded(path.read_bytes(), "svg+xml" if path.suffix == ".svg" else "png", alt)


def figure_tag(fig, alt: str) -> str:
    """A matplotlib figure as an embedded PNG."""
    png = io.BytesIO()
    fig.savefig(png, format="png")
    return embedded(png.getvalue(), "png", alt)


def embedded(data: bytes, kind: str, alt: str) -> str:
    return (f'<img alt="{html.escape(alt)}" '
            f'src="data:image/{kind};base64,{base64.b64encode(data).decode("ascii")}">')


def missing(what: str) -> str:
    return f'<p class="muted">No {html.escape(what)} in this run.</p>'


def summary_html(run_dir: Path) -> str:
    path = run_dir / "summary.json"
    if not path.exists():
        try:  # where it stopped, from its last checkpoint
            last = run_dir / "checkpoints" / "last.json"
            steps = json.loads(last.read_text(encoding="utf-8"))["step"]
            where = f"; its last checkpoint is after {count(steps, 'step')}"
        except (OSError, ValueError, KeyError, TypeError):
            where = ""
        if (pid := lock_holder(run_dir)) is not None:
            return missing(f"summary.json (the run is training now, in process {pid}{where})")
        if where and folder_holds(run_dir.parent) == "a comparison":  # a compare's variant:
            # compare continues it, within the comparison (train --resume would finish it
            # outside, the comparison's table never the wiser)
            where += (f": the compare command that trained it, with --out "
                      f"{shell_path(printable(str(run_dir.parent)))}, continues it")
        elif where:
            where += f": minigpt train --resume {shell_path(printable(str(run_dir)))} continues it"
        return missing(f"summary.json (the run has not finished{where})")
    try:
        s = json.loads(path.read_text(encoding="utf-8"))
        rows = [("final validation loss (whole split)", fmt(s["final_val_loss"], ".4f")),
                ("best validation estimate", fmt(s["best_val_loss"], ".4f")),
                ("steps", f"{s['steps']:,}"), ("training time", f"{s['train_s']:.1f} s"),
                ("tokens / s", f"{s['tokens_per_s']:,}"), ("parameters", f"{s['params']:,}")]
    except (ValueError, KeyError, TypeError):  # damaged: the rest of the report still stands
        return missing("readable summary.json")
    return "<table>" + "".join(f"<tr><th>{k}</th><td class=num>{v}</td></tr>"
                               for k, v in rows) + "</table>"


def curves_html(run_dir: Path, rows: list[dict], findings: list) -> str:
    """The loss and learning-rate curves, drawn from the metrics rows as they are now (the
    run's own loss.png is of its last evaluation, before whatever ended it: a NaN, a crash),
    into the page alone (the run folder may be read-only; it may have no plots)."""
    if not rows:
        return missing("metrics rows to draw")
    try:  # (on the run's own scale)
        diag = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))["config"]["diag"]
    except (OSError, ValueError, KeyError, TypeError):
        diag = {}
    log_scale = isinstance(diag, dict) and diag.get("log_scale", False) is True
    figures = run_curves(run_dir, rows, findings, log_scale)
    return "".join(figure_tag(fig, name) for name, fig in figures.items())


def reading_html(findings: list, torn: int = 0) -> str:
    """The findings as a list; first, where metrics.jsonl has damaged lines, that the reading
    and the curves leave them out (its best, say, may then not be the checkpoint's)."""
    note = (f'<p class="muted">metrics.jsonl has {torn} damaged line(s) (a crash tears the '
            f"last): the reading and the curves leave them out.</p>") if torn else ""
    if not findings:
        return note + missing("metrics rows to read")
    items = "".join(f"<li><b>{html.escape(f.kind)}</b>: {html.escape(f.message)}</li>"
                    for f in findings)
    return f"{note}<ul>{items}</ul>"


def gradflow_html(run_dir: Path) -> str:
    if not (run_dir / "gradflow.png").exists():
        return missing("gradient-flow record (--gradflow-every was 0)")
    rows = read_jsonl(run_dir / "gradflow.jsonl")
    flagged = sum(1 for r in rows if r["flagged"])
    note = f"<p>{len(rows)} probes; {flagged} with flagged parameters.</p>" if rows else ""
    return image_tag(run_dir / "gradflow.png", "per-layer gradient norm") + note


def attention_html(run_dir: Path, most: int = 4) -> str:
    shots = sorted((run_dir / "attention").glob("step-*.png"),
                   key=lambda shot: (len(shot.stem), shot.stem))  # (step-1000000 last)
    if not shots:
        return missing("attention snapshots (--attention-every was 0)")
    if len(shots) > most:  # first, last and evenly spaced between
        shots = [shots[round(i * (len(shots) - 1) / (most - 1))] for i in range(most)]
    return "".join(f"<h3>{p.stem}</h3>{image_tag(p, p.stem)}" for p in shots)


def samples_html(run_dir: Path) -> str:
    rows = read_jsonl(run_dir / "samples.jsonl")
    if not rows:
        return missing("samples")
    return "".join(f"<h3>step {r['step']:,}</h3><pre>\n{html.escape(visible(r['text']))}</pre>"
                   for r in rows)  # (HTML drops a <pre>'s first line break: the text's stays)


def graph_html(run_dir: Path) -> str:
    for name in ("graph.svg", "graph.png"):
        if (run_dir / name).exists():
            return image_tag(run_dir / name, "computation graph")
    return missing("computation graph (graph.svg; run minigpt graph --run DIR)")


def config_html(run_dir: Path) -> str:  # build_report has checked that config.json is there
    config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    return f"<pre>{html.escape(json.dumps(config, indent=2, ensure_ascii=False))}</pre>"


SECTIONS = [  # (id, heading, the function that writes the section)
    ("summary", "Summary", summary_html), ("curves", "Loss and learning rate", curves_html),
    ("reading", "Reading the curve", reading_html),
    ("gradflow", "Gradient flow", gradflow_html), ("attention", "Attention", attention_html),
    ("samples", "Samples", samples_html), ("graph", "Computation graph", graph_html),
    ("config", "Configuration", config_html)]


def build_report(run_dir: str | Path, rows: list[dict] | None = None,
                 graph_dir: Path | None = None) -> str:
    """The page; `rows` are the run's metrics rows where the caller has read them already
    (each reading of metrics.jsonl warns of its damaged lines); the graph's picture is
    graph_dir's graph.svg where there is one, else the run folder's."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").exists():
        raise MiniGPTError(f"{run_dir} is not a run folder (no config.json)")
    rows = read_jsonl(run_dir / "metrics.jsonl") if rows is None else rows
    findings = read_curve(rows, run_facts(run_dir))
    torn = jsonl_rows(run_dir / "metrics.jsonl")[1]

    def section(part) -> str:
        if part is reading_html:
            return reading_html(findings, torn)
        if part is graph_html and graph_dir and (graph_dir / "graph.svg").exists():
            return graph_html(graph_dir)  # (else the run folder's, if it holds one)
        return curves_html(run_dir, rows, findings) if part is curves_html else part(run_dir)

    nav = "".join(f'<a href="#{key}">{title}</a>' for key, title, _ in SECTIONS)
    body = "".join(f'<section id="{key}"><h2>{title}</h2>{section(part)}</section>'
                   for key, title, part in SECTIONS)
    title = f"minigpt run {html.escape(printable(run_dir.resolve().name))}"
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{title}</title><style>{STYLE}</style></head>"
            f"<body><main><h1>{title}</h1><nav>{nav}</nav>{body}</main></body></html>\n")


def write_report(run_dir: str | Path, out: str | Path | None = None,
                 rows: list[dict] | None = None, graph_dir: Path | None = None) -> Path:
    out = Path(out) if out else Path(run_dir) / "report.html"
    atomic_write_text(out, build_report(run_dir, rows, graph_dir))
    return out
