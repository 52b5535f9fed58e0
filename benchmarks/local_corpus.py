"""A large, real, varied corpus from what a machine without internet has: TinyShakespeare and the
text files installed with Python and the system (Python sources and docs of the standard
library and every installed package, /usr/share/doc, C headers), each UTF-8 file under 4 MB once,
in sorted order, written as parts of about 256 MB; then the whole repeated until it holds at
least --chars characters. Prints what it gathered, then one JSON line.

    python benchmarks/local_corpus.py --out /tmp/corpus --chars 4e9
"""

from __future__ import annotations

import json
import sys
import sysconfig
from pathlib import Path

from common import exit_status, parser, positive

from minigpt.data import ensure_tinyshakespeare

SUFFIXES = {".py", ".pyi", ".rst", ".md", ".txt", ".h", ".c", ".html", ".pm", ".pod"}
PART_CHARS = 1 << 28


def sources() -> list[Path]:
    roots = {Path(sysconfig.get_paths()[k]) for k in ("stdlib", "purelib", "platlib")}
    roots |= {Path("/usr/share/doc"), Path("/usr/include"), Path("/usr/lib/python3")}
    files = set()
    for root in sorted(r for r in roots if r.is_dir()):
        files |= {p.resolve() for p in root.rglob("*") if p.suffix in SUFFIXES
                  and p.is_file() and p.stat().st_size < 4 << 20}
    return [ensure_tinyshakespeare(), *sorted(files)]


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--out", required=True, help="folder for the parts")
    ap.add_argument("--chars", type=positive(float), default=4e9,
                    help="characters at least (default 4e9)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):  # (old parts would be read
        ap.error(f"--out {out} is a file" if not out.is_dir() else  # with the new ones)
                 f"--out {out} is not empty: give a new or empty folder")
    out.mkdir(parents=True, exist_ok=True)
    texts, kinds = [], {}
    for path in sources():
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if "\x00" not in text and text.strip():
            texts.append(text)
            kinds[path.suffix] = kinds.get(path.suffix, 0) + len(text)
    base = "\n".join(texts)
    copies = int(-(-args.chars // len(base)))
    part, written, buf = 0, 0, []
    for _ in range(copies):
        for start in range(0, len(base), PART_CHARS):
            buf.append(base[start:start + PART_CHARS])
            if sum(map(len, buf)) >= PART_CHARS:
                (out / f"part-{part:03d}.txt").write_text("".join(buf), encoding="utf-8")
                written, part, buf = written + sum(map(len, buf)), part + 1, []
    if buf:
        (out / f"part-{part:03d}.txt").write_text("".join(buf), encoding="utf-8")
        written, part = written + sum(map(len, buf)), part + 1
    print(f"{len(texts):,} files, {len(base):,} characters once "
          f"({', '.join(f'{k} {v / 1e6:,.0f} M' for k, v in sorted(kinds.items()))}); "
          f"repeated {copies}x into {part} parts: {written:,} characters in {out}")
    print(json.dumps({"files": len(texts), "chars_once": len(base), "copies": copies,
                      "parts": part, "chars": written, "python": sys.version.split()[0]}))
    return 0


if __name__ == "__main__":
    sys.exit(exit_status(main))
