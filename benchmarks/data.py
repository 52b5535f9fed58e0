"""Big-corpus data path: `minigpt prepare` throughput and memory, and batches drawn from shards.

For each corpus size (default 10 M and 100 M characters) it writes a synthetic corpus, --files
UTF-8 files of random words (a fixed vocabulary of 2,000 made-up words, a few with accents, one
line break per 12 words on average), then runs `minigpt prepare` on the folder in a child
process of its own, so that the child's peak resident memory is that run's alone, and reports

  prepare   tokens/s (the command's own timing, both passes; process start not included),
            peak RSS of the whole command (VmHWM, Linux), and the peak of a process that only
            imports minigpt (torch included) for reference: prepare adds the difference;
  disk      bytes of text in, bytes of shards out;
  batches   get_batch at B=32, T=128 (int64 x and y on the CPU): batches/s over the prepared
            training split's shards (ShardedTokens, memory-mapped) and, for reference, over the
            same tokens held
            in one in-memory numpy array;

then extrapolates to 1 B tokens: time from the largest size's throughput, disk at the same
bytes per token, memory and batch speed unchanged if they did not grow with size.
Prints a table, then one JSON line.

    python benchmarks/data.py [--tokens 100000000] [--small 10000000] [--files 8]
                              [--tokenizer char] [--shard-tokens 20000000] [--dir DIR] [--keep]
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import cpu, exit_status, machine, parser, positive

from minigpt.corpus import open_prepared
from minigpt.data import get_batch

VOCAB_WORDS = 2000
WORDS_PER_LINE = 12
BATCH, BLOCK = 32, 128


# ---- the synthetic corpus ----

def word_list(seed: int) -> list[str]:
    """VOCAB_WORDS made-up words of 2 to 9 letters; one in ten has an accented letter."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("etaoinshrdlucmfwypvbgkjqxz"))
    words = []
    for i in range(VOCAB_WORDS):
        word = "".join(rng.choice(letters, rng.integers(2, 10)))
        words.append(word[:-1] + "é" if i % 10 == 0 else word)
    return words


def write_corpus(folder: Path, n_chars: int, n_files: int, seed: int) -> int:
    """n_files files holding about n_chars characters of random words in all; returns bytes."""
    folder.mkdir(parents=True)
    words = word_list(seed)
    pieces = np.array([w + " " for w in words] + [w + "\n" for w in words])  # word + separator
    mean_len = np.mean([len(p) for p in pieces])
    rng = np.random.default_rng(seed + 1)
    per_file = -(-n_chars // n_files)  # rounded up: at least n_chars in all
    for f in range(n_files):
        with open(folder / f"part-{f:03d}.txt", "w", encoding="utf-8") as out:
            written = 0
            while written < per_file:  # blocks of about 1 M characters
                n = max(1, int(min(1_000_000, per_file - written) / mean_len))
                newline = rng.random(n) < 1 / WORDS_PER_LINE
                block = "".join(pieces[rng.integers(0, VOCAB_WORDS, n) + VOCAB_WORDS * newline]
                                .tolist())
                out.write(block)
                written += len(block)
    return sum(p.stat().st_size for p in folder.iterdir())


# ---- the measurements ----

# A child runs the `minigpt` command (as `python -m minigpt` does) and reports its own peak
# resident memory: VmHWM, which exec resets, unlike ru_maxrss, which keeps the forked parent's.
CHILD = """
import resource, sys
from minigpt.cli import main
code = main(sys.argv[1:]) if sys.argv[1:] else 0
try:
    peak = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM'))
except OSError:  # no /proc: ru_maxrss (KiB on Linux)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print('peak-kib', peak, file=sys.stderr)
sys.exit(code)
"""


def run_child(args: list[str]) -> tuple[str, float, int]:
    """Run `minigpt ARGS` (no ARGS: only import minigpt) in a child process: its stdout, wall
    seconds and peak resident memory in bytes."""
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode:
        raise SystemExit(f"minigpt {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")
    peak = int(re.search(r"peak-kib (\d+)", r.stderr).group(1))
    return r.stdout, wall, peak * 1024


def measure_prepare(corpus: Path, out: Path, tokenizer: str, shard_tokens: int) -> dict:
    line, wall, rss = run_child(["prepare", "--text", str(corpus), "--out", str(out),
                                 "--tokenizer", tokenizer, "--shard-tokens", str(shard_tokens),
                                 "--no-progress"])
    index = json.loads((out / "index.json").read_text(encoding="utf-8"))
    shards = index["shards"]["train"] + index["shards"]["val"]
    said = re.search(r": ([\d.]+) s, ([\d,]+) tokens/s", line)  # the command's own timing
    return {"tokens": index["tokens"], "shards": len(shards), "dtype": index["dtype"],
            "prepare_s": float(said.group(1)), "wall_s": round(wall, 2),
            "tokens_per_s": int(said.group(2).replace(",", "")),
            "peak_rss_bytes": rss, "text_bytes": index["sources"]["bytes"],
            "shard_bytes": sum((out / s["file"]).stat().st_size for s in shards)}


def batches_per_s(data, seconds: float, seed: int) -> float:
    """get_batch(data, 32, 128) calls per second, over about `seconds` (after a warm-up)."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(20):
        get_batch(data, BATCH, BLOCK, g)
    n, t0 = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < seconds:
        for _ in range(50):
            get_batch(data, BATCH, BLOCK, g)
        n += 50
    return n / elapsed


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--tokens", type=positive(), default=100_000_000,
                    help="characters in the large corpus (= tokens for char; default 100 M)")
    ap.add_argument("--small", type=positive(zero=True), default=10_000_000,
                    help="characters in the small corpus, to see memory not grow (0 = none)")
    ap.add_argument("--files", type=positive(), default=8, help="files per corpus (default 8)")
    ap.add_argument("--tokenizer", default="char", choices=("char", "bpe"),
                    help="prepare's tokenizer (default char)")
    ap.add_argument("--shard-tokens", type=positive(), default=20_000_000,
                    help="tokens per shard (default 20 M, so the large corpus has several)")
    ap.add_argument("--batch-seconds", type=positive(float), default=3.0,
                    help="time spent measuring each batch throughput (default 3)")
    ap.add_argument("--dir", help="working folder (default: a new one under /tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the corpora and shards")
    ap.add_argument("--seed", type=int, default=0,
                    help="seed of the synthetic corpus and the batches drawn (default 0)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    sizes = sorted({n for n in (args.small, args.tokens) if n > 0})
    made = not args.dir or not Path(args.dir).exists()  # (a folder of the user's stays)
    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="minigpt-data-"))
    ours = [work / f"{kind}-{n}" for n in sizes for kind in ("corpus", "prepared")]
    if work.exists() and not work.is_dir():
        ap.error(f"--dir {work} is a file, not a folder")
    if taken := [p.name for p in ours if p.exists()]:
        ap.error(f"--dir {work} holds {', '.join(taken)} already (kept by --keep?): remove "
                 f"them, or choose another --dir")
    work.mkdir(parents=True, exist_ok=True)
    try:
        _, _, baseline = run_child([])
        rows = []
        for n in sizes:
            corpus, out = work / f"corpus-{n}", work / f"prepared-{n}"
            t0 = time.perf_counter()
            write_corpus(corpus, n, args.files, args.seed)
            row = {"chars": n, "write_corpus_s": round(time.perf_counter() - t0, 1),
                   **measure_prepare(corpus, out, args.tokenizer, args.shard_tokens)}
            shards = open_prepared(out)[0]  # the training split
            row["batches_per_s_shards"] = round(batches_per_s(shards, args.batch_seconds,
                                                              args.seed), 1)
            in_memory = shards.astype(shards.dtype)
            row["batches_per_s_in_memory"] = round(batches_per_s(in_memory, args.batch_seconds,
                                                                 args.seed), 1)
            del in_memory, shards
            rows.append(row)
            if not args.keep:
                shutil.rmtree(corpus)
    finally:
        if not args.keep:
            for path in ours:
                shutil.rmtree(path, ignore_errors=True)
            if made:
                shutil.rmtree(work, ignore_errors=True)

    big = rows[-1]
    per_token = big["shard_bytes"] / big["tokens"]
    text_per_token = big["text_bytes"] / big["tokens"]
    grew = big["peak_rss_bytes"] - rows[0]["peak_rss_bytes"]
    one_b = {"tokens": 10**9, "prepare_s": round(1e9 / big["tokens_per_s"]),
             "shard_bytes": round(1e9 * per_token), "text_bytes": round(1e9 * text_per_token),
             "peak_rss_bytes": big["peak_rss_bytes"],
             "batches_per_s_shards": big["batches_per_s_shards"]}

    print(f"minigpt prepare ({args.tokenizer}) on synthetic text, {args.files} files, shards of "
          f"{args.shard_tokens:,} tokens; get_batch B={BATCH} T={BLOCK}; "
          f"torch {torch.__version__}, {cpu()}, {os.cpu_count()} CPUs")
    header = (f"{'tokens':>13} {'shards':>6} {'prepare s':>9} {'tokens/s':>11} "
              f"{'peak RSS':>10} {'text':>10} {'shards':>10} {'batch/s shards':>14} "
              f"{'batch/s memory':>14}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['tokens']:>13,} {r['shards']:>6} {r['prepare_s']:>9.1f} "
              f"{r['tokens_per_s']:>11,} {mib(r['peak_rss_bytes']):>10} "
              f"{mib(r['text_bytes']):>10} {mib(r['shard_bytes']):>10} "
              f"{r['batches_per_s_shards']:>14,.0f} {r['batches_per_s_in_memory']:>14,.0f}")
    print(f"{'1 B (extrap.)':>13} {'':>6} {one_b['prepare_s']:>9,} {big['tokens_per_s']:>11,} "
          f"{mib(one_b['peak_rss_bytes']):>10} {mib(one_b['text_bytes']):>10} "
          f"{mib(one_b['shard_bytes']):>10} {one_b['batches_per_s_shards']:>14,.0f} {'-':>14}")
    print(f"peak RSS of a process that only imports minigpt: {mib(baseline)}; "
          f"growth from {rows[0]['tokens']:,} to {big['tokens']:,} tokens: {mib(grew)}")
    print(json.dumps({
        "benchmark": "data", "tokenizer": args.tokenizer, "files": args.files,
        "shard_tokens": args.shard_tokens, "batch": BATCH, "block": BLOCK,
        **machine(), "cpus": os.cpu_count(),
        "import_rss_bytes": baseline, "rows": rows, "extrapolated_1b": one_b,
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(exit_status(main))
