"""The benchmark scripts' arguments: a count that cannot be meant (0 rounds, 'abc' tokens) is
argparse's one line before anything is timed, and a MiniGPTError (no TinyShakespeare to
download, say) is one line too; each script's --help describes it in whole sentences, and
every option."""

import argparse
import importlib.util
import json
import runpy
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from minigpt import MiniGPT, MiniGPTError, precision

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def script(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCHMARKS / name), *args], capture_output=True,
                          text=True, timeout=120)


def as_main(monkeypatch, capsys, name: str, *args: str) -> tuple[int, str, str]:
    """`python benchmarks/NAME ARGS` in this process, for what it does before it times anything
    (a process of its own cost ~2.5 s, torch's import): the script run as __main__ with its
    folder first on the path; its exit status, stdout and stderr. One that gets past its
    arguments, and would start the benchmark itself, fails after 30 s instead of hanging."""
    def too_long(*_):
        raise TimeoutError(f"{name} {' '.join(args)} ran on past its arguments")

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.setattr(sys, "argv", [str(BENCHMARKS / name), *args])
    previous = signal.signal(signal.SIGALRM, too_long)
    signal.alarm(30)
    try:
        with pytest.raises(SystemExit) as exited:
            runpy.run_path(str(BENCHMARKS / name), run_name="__main__")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    return exited.value.code, *capsys.readouterr()


@pytest.mark.parametrize("name, args, said", [
    ("train_step.py", ["--rounds", "0"], "argument --rounds: must be above 0, got 0"),
    ("train_step.py", ["--variants", "lesson,bogus"], "argument --variants: unknown 'bogus' "
     "(choose from lesson, minigpt, float32-eager, foreach-adamw, compile, bf16-autocast, "
     "bf16-compile, bf16-weights)"),
    ("data.py", ["--batch-seconds", "inf"], "argument --batch-seconds: must be a finite number, "
     "got inf"),
    ("sample.py", ["--new-tokens", "100,abc"], "argument --new-tokens: not a number: 'abc'"),
    ("speedrun.py", ["--budgets", "20,-1"], "argument --budgets: must be above 0, got -1"),
    ("data.py", ["--small", "-5"], "argument --small: must be at least 0, got -5"),
    ("local_corpus.py", ["--out", str(BENCHMARKS)], f"--out {BENCHMARKS} is not empty: give a "
     "new or empty folder"),  # (its old parts would be read with the new)
    ("local_corpus.py", ["--out", str(BENCHMARKS / "common.py")],
     f"--out {BENCHMARKS / 'common.py'} is a file"),
])
def test_a_count_that_cannot_be_meant_is_one_line(name, args, said, monkeypatch, capsys):
    code, out, err = as_main(monkeypatch, capsys, name, *args)
    assert code == 2 and out == "" and err.splitlines()[-1] == f"{name}: error: {said}"


def test_an_error_of_minigpt_is_one_line_and_help_is_whole_sentences(capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # as a script there imports it
    from common import exit_status

    def main():
        raise MiniGPTError("cannot download it")

    assert exit_status(main) == 2
    assert capsys.readouterr().err == f"{Path(sys.argv[0]).name}: error: cannot download it\n"
    code, out, _ = as_main(monkeypatch, capsys, "speedrun.py", "--help")
    assert code == 0
    described = out.split("\n\n")[1]
    assert " ".join(described.split()).endswith("the default run and the `fast` preset.")


@pytest.mark.parametrize("name", sorted(p.name for p in BENCHMARKS.glob("*.py")
                                         if p.name != "common.py"))
def test_every_option_of_a_benchmark_says_what_it_does(name, monkeypatch, capsys):
    """Each script's parser, caught as it parses, has a help text for every option."""
    parsers = []

    def caught(parser, *args, **kwargs):
        parsers.append(parser)
        raise SystemExit(0)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", caught)
    assert as_main(monkeypatch, capsys, name)[0] == 0 and parsers
    silent = [a.option_strings for p in parsers for a in p._actions if not a.help]
    assert silent == []


def test_the_data_benchmark_removes_what_it_made_and_nothing_of_the_users(tmp_path):
    """--dir names a folder of the user's: it was removed whole, with what was in it before."""
    (tmp_path / "mywork.txt").write_text("precious")
    args = ["--tokens", "20000", "--small", "0", "--files", "1", "--shard-tokens", "50000",
            "--batch-seconds", "0.1", "--dir", str(tmp_path)]
    r = script("data.py", *args)
    assert r.returncode == 0, r.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["mywork.txt"]
    assert json.loads(r.stdout.splitlines()[-1])["benchmark"] == "data"
    (tmp_path / "corpus-20000").mkdir()  # kept by --keep: not written over, nor removed
    r = script("data.py", *args)
    assert r.returncode == 2 and r.stderr.splitlines()[-1].endswith(
        f"--dir {tmp_path} holds corpus-20000 already (kept by --keep?): remove them, or choose "
        f"another --dir")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus-20000", "mywork.txt"]


def test_a_name_or_number_given_twice_is_one_row(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from common import one_of, positives

    assert one_of(("lesson", "minigpt"))("lesson,minigpt,lesson") == ["lesson", "minigpt"]
    assert positives(float)("20,180,20.0") == [20.0, 180.0]


def test_the_speedrun_says_the_dtype_auto_chose_and_prints_only_its_table(tmp_path):
    """Its rows said 'auto' (the caller's config; train resolves its own copy), and every run's
    log came before the table on stdout."""
    r = script("speedrun.py", "--budgets", "1", "--skip-default", "--rounds", "1",
               "--eval-every", "1000", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("speedrun on TinyShakespeare") and len(lines) == 6  # head, table
    row = json.loads(lines[-1])["rows"][1]
    run = next(tmp_path.glob("*/fast-1s"))
    assert row["dtype"] == json.loads((run / "config.json").read_text())["environment"]["dtype"]
    assert row["dtype"] in ("float32", "bfloat16") and f"dtype auto ({row['dtype']})" in lines[0]


def bench(monkeypatch, name: str):
    """benchmarks/NAME.py as a module of its own (its folder first on the path, as run)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Clock:
    """A perf_counter that moves only when a fake step moves it: each variant's time is known."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now

    def strftime(self, fmt: str) -> str:
        return "now"


def table_and_json(out: str) -> tuple[list[list[str]], dict]:
    """The rows of the table printed under its dashes (split on spaces), and the JSON line."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if set(line) == {"-"}) + 1
    return [line.split() for line in lines[start:-1]], json.loads(lines[-1])


def test_train_step_reports_each_variants_median_of_counted_rounds_against_the_lesson(
        monkeypatch, capsys):
    """Fake steps whose cost is known: 1 s each in the first step and the warm-up rounds, then
    base x (1, 3, 2) in the three counted rounds (median 2 x base, min base, max 3 x base).
    The figures are derived here from those costs: ms/step, speed-up = the lesson's time over
    the variant's, tokens/s; the table and the JSON line say the same; only the variants asked
    for are built, and the rounds interleave them."""
    ts = bench(monkeypatch, "train_step")
    clock, calls = Clock(), []
    base = {"minigpt": 0.004, "lesson": 0.010, "bf16-weights": 0.005}
    warmup, spr, factors = 2, 2, (1, 3, 2)

    def build(name, cfg, tokens, device):
        count = [0]

        def step():
            k, count[0] = count[0], count[0] + 1
            calls.append(name)
            counted = k - 1 - warmup * spr  # the first step, then the warm-up rounds
            clock.now += 1.0 if counted < 0 else base[name] * factors[counted // spr]
            return torch.zeros(())
        return step, torch.bfloat16 if name == "bf16-weights" else torch.float32

    monkeypatch.setattr(ts, "time", clock)
    monkeypatch.setattr(ts, "build", build)
    monkeypatch.setattr(ts.performance, "matmul_peak",
                        lambda device, dtype, seconds: 1e12 if dtype == torch.float32 else 2e12)
    monkeypatch.setattr(precision, "cpu_name", lambda: "Test CPU 9000")
    monkeypatch.setattr(precision, "bf16_flags", lambda: ["avx512_bf16", "amx_bf16"])
    assert ts.main(["--variants", "minigpt,lesson,bf16-weights", "--rounds", "3", "--warmup",
                    str(warmup), "--steps-per-round", str(spr), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    table, record = table_and_json(out)

    names = list(base)
    rounds = [name for name in names for _ in range(spr)] * (warmup + 3)
    assert calls == names + rounds  # each built once, its first step, then interleaved rounds
    cfg = ts.resolve_config("seed")
    tokens_per_step = cfg.train.batch_size * cfg.model.block_size
    flops = ts.performance.train_flops_per_token(cfg.model)
    assert [row["variant"] for row in record["rows"]] == names
    for row, cells in zip(record["rows"], table, strict=True):
        s = 2 * base[row["variant"]]
        assert row["ms_per_step"] == pytest.approx(s * 1e3)
        assert row["speedup_vs_lesson"] == pytest.approx(round(2 * base["lesson"] / s, 2))
        assert row["tokens_per_s"] == round(tokens_per_step / s)
        assert row["mfu"] == pytest.approx(round(tokens_per_step / s * flops / 2e12, 4))
        assert row["min_max_ms"] == pytest.approx([base[row["variant"]] * 1e3,
                                                   base[row["variant"]] * 3e3])
        assert row["first_step_s"] == 1.0
        assert row["dtype"] == ("bfloat16" if row["variant"] == "bf16-weights" else "float32")
        assert cells[:5] == [row["variant"], f"{s * 1e3:.1f}", f"{tokens_per_step / s:,.0f}",
                             f"{2 * base['lesson'] / s:.2f}x", f"{row['mfu']:.1%}"]
    assert (record["cpu"], record["bf16_flags"]) == ("Test CPU 9000", ["avx512_bf16", "amx_bf16"])
    assert "Test CPU 9000 (avx512_bf16+amx_bf16)" in out.splitlines()[0]
    assert (record["rounds"], record["steps_per_round"]) == (3, spr)


def test_every_train_step_variant_trains_the_same_model_on_the_same_batch_in_its_dtype(
        monkeypatch):
    """Each variant's one step, seen from the model's forward: the same (B, T) batch, the same
    number of parameters, and the dtype its row claims (autocast's, or the weights')."""
    ts = bench(monkeypatch, "train_step")
    cfg = ts.resolve_config("seed", None, {"n_layer": 2, "n_embd": 16, "n_head": 2,
                                           "block_size": 8, "batch_size": 3})
    tokens = ts.synthetic_tokens(cfg.model.vocab_size, 0)[:5000]
    seen = {}

    def hook(module, args):
        if isinstance(module, (ts.MiniGPT, ts.lesson.MiniGPT)):
            weights = next(module.parameters()).dtype
            dtype = (torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu")
                     else weights)
            seen[name] = (tuple(args[0].shape), tuple(args[1].shape),
                          sum(p.numel() for p in module.parameters()), dtype, weights)

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        claimed = {}
        for name in [v for v in ts.VARIANTS if "compile" not in v]:  # (compiling is slow)
            step, claimed[name] = ts.build(name, cfg, tokens, torch.device("cpu"))
            step()
    finally:
        handle.remove()
    params = ts.MiniGPT.from_config(cfg.model).num_params()
    shape = (cfg.train.batch_size, cfg.model.block_size)
    assert {n: s[:3] for n, s in seen.items()} == {n: (shape, shape, params) for n in claimed}
    assert {n: s[3] for n, s in seen.items()} == claimed
    assert {n: s[4] for n, s in seen.items()} == {  # the weights: bf16 in bf16-weights only
        n: torch.bfloat16 if n == "bf16-weights" else torch.float32 for n in claimed}
    assert claimed["bf16-weights"] == torch.bfloat16 and claimed["float32-eager"] == torch.float32


def test_sample_reports_each_variants_median_per_token_against_the_lesson(monkeypatch, capsys):
    """The real samplers (their tokens must agree) on a fake clock that each call moves by a
    known cost: 1 s in a row's warm-up run, then base x (1, 3, 2) per new token in the three
    counted runs. ms/token, tokens/s, speed-up (the lesson's time over the variant's) and the
    spread are derived here; the table and the JSON line say the same, and the CPU."""
    sm = bench(monkeypatch, "sample")
    clock, calls = Clock(), []
    base = {"lesson": 0.004, "uncached": 0.002, "cached": 0.0005}
    factors = (1, 3, 2)

    def costs(name, sampler):
        def timed_sampler(model, idx, n, **kwargs):
            k = sum(c == name for c in calls) % (1 + len(factors))  # its run in this row
            calls.append(name)
            clock.now += 1.0 if k == 0 else base[name] * factors[k - 1] * n
            return sampler(model, idx, n, **kwargs)
        return timed_sampler

    monkeypatch.setattr(sm, "time", clock)
    monkeypatch.setattr(sm.lesson, "generate", costs("lesson", sm.lesson.generate))
    real = sm.generate
    monkeypatch.setattr(sm, "generate", lambda model, idx, n, cache=True: costs(
        "cached" if cache else "uncached", real)(model, idx, n, cache=cache))
    monkeypatch.setattr(precision, "cpu_name", lambda: "Test CPU 9000")
    monkeypatch.setattr(precision, "bf16_flags", lambda: ["avx512_bf16"])
    assert sm.main(["--new-tokens", "3,5", "--full-block-tokens", "2", "--repeats", "3"]) == 0
    out = capsys.readouterr().out
    table, record = table_and_json(out)

    assert calls == list(base) * 4 * 3  # interleaved: the warm-up run, then three, per row
    assert [(r["new_tokens"], r["prompt_tokens"], r["tokens_inside_block"]) for r in
            record["rows"]] == [(3, 6, 3), (5, 6, 5), (2, 128, 1)]
    cells = [line for line in table if "same" not in line]
    for i, row in enumerate(record["rows"]):
        assert row["same_tokens"] is True
        for j, name in enumerate(base):
            s = 2 * base[name]  # per token
            assert row["ms_per_token"][name] == pytest.approx(round(s * 1e3, 3))
            assert row["tokens_per_s"][name] == pytest.approx(round(1 / s, 1))
            assert row["speedup_vs_lesson"][name] == round(base["lesson"] / base[name], 2)
            assert row["spread_ms_per_token"][name] == pytest.approx(
                [round(base[name] * 1e3, 3), round(base[name] * 3e3, 3)])
            assert cells[3 * i + j][-5:-1] == [name, f"{s * 1e3:.3f}", f"{1 / s:.1f}",
                                               f"{base['lesson'] / base[name]:.2f}x"]
    assert (record["cpu"], record["bf16_flags"]) == ("Test CPU 9000", ["avx512_bf16"])
    assert "Test CPU 9000 (avx512_bf16)" in out.splitlines()[0]


def test_speedrun_ratios_are_the_lessons_time_to_1_72_over_each_runs(monkeypatch, capsys):
    """The lesson's step on a fake clock (1 s for its warm-up step, then base x (1, 3, 2) per
    step in three rounds of 10: 2 x base), its batch and model seen as it steps, and runs of
    known times to each target: the lesson's time is 5000 steps of 2 x base; a ratio is that over
    the run's time; the table and the JSON line say the same."""
    sr = bench(monkeypatch, "speedrun")
    clock, seen = Clock(), []
    base, factors = 0.03, (1, 3, 2)

    def lesson_step(model, optimizer, get_batch):
        x, y = get_batch("train")
        seen.append((tuple(x.shape), tuple(y.shape), sum(p.numel() for p in model.parameters())))
        k = len(seen) - 2  # after the warm-up step
        clock.now += 1.0 if k < 0 else base * factors[k // 10]
        return torch.zeros(())

    times = {"default": {"1.72": 50.0, "1.6": 100.0, "1.5": None},
             "fast-20s": {"1.72": 10.0, "1.6": 20.0, "1.5": 40.0},
             "fast-5s": {"1.72": 4.0, "1.6": None, "1.5": None}}
    runs = []

    def run(name, preset, out, **settings):
        runs.append((name, preset, settings))
        return {"run": name, "preset": preset, "settings": settings, "final_val_loss": 1.55,
                "steps": 100, "train_s": 60.0, "time_to": times[name], "dtype": "float32"}

    monkeypatch.setattr(sr, "time", clock)
    monkeypatch.setattr(sr.lesson, "train_step", lesson_step)
    monkeypatch.setattr(sr, "run", run)
    assert sr.main(["--budgets", "20,5", "--rounds", "3", "--eval-every", "7", "--dtype",
                    "float32", "--out", "unused"]) == 0
    table, record = table_and_json(capsys.readouterr().out)

    cfg = sr.resolve_config("seed")  # the lesson's model and batch
    batch = (cfg.train.batch_size, cfg.model.block_size)
    assert set(seen) == {(batch, batch, MiniGPT.from_config(cfg.model).num_params())}
    assert len(seen) == 1 + 3 * 10
    assert runs == [("default", "seed", {"eval_every": 7, "dtype": "float32"}),
                    *[(f"fast-{b:g}s", "fast", {"time_budget": b, "eval_every": 7,
                                                "dtype": "float32"}) for b in (20.0, 5.0)]]
    reference = 2 * base * 5000
    assert record["lesson_step_ms"] == pytest.approx(2 * base * 1e3)
    assert record["reference_time_to_1.72"] == pytest.approx(reference)
    assert record["rows"][0]["time_to"] == {"1.72": pytest.approx(reference), "1.6": None,
                                            "1.5": None}
    assert table[0] == ["lesson", "-", "5000", f"{reference:.1f}", f"{reference:.1f}", "1.0x",
                        "-", "-", "-", "-"]
    for cells, name in zip(table[1:], times, strict=True):
        expected = [item for t in times[name].values()
                    for item in ((f"{t:.1f}", f"{reference / t:.1f}x") if t else ("-", "-"))]
        assert cells == [name, "1.5500", "100", "60.0", *expected]


def test_data_batch_speed_leaves_out_its_warm_up(monkeypatch):
    """get_batch at 1 s a call for the 20 warm-up calls, then 1 ms: 1000 batches/s."""
    dm = bench(monkeypatch, "data")
    clock, calls = Clock(), []

    def get_batch(data, batch, block, g):
        calls.append((batch, block))
        clock.now += 1.0 if len(calls) <= 20 else 0.001

    monkeypatch.setattr(dm, "time", clock)
    monkeypatch.setattr(dm, "get_batch", get_batch)
    assert dm.batches_per_s(None, 0.5, 0) == pytest.approx(1000)
    assert set(calls) == {(32, 128)}


def test_data_extrapolates_from_the_largest_corpus_and_reports_each_path(monkeypatch, capsys,
                                                                         tmp_path):
    """prepare's figures made up per size, and batch speeds told apart by the data they are
    given (the shards, or the same tokens in memory): 1 B tokens is the largest size's
    throughput and bytes per token, scaled here by hand."""
    dm = bench(monkeypatch, "data")

    class Shards:
        dtype = np.uint16

        def astype(self, dtype):
            return np.zeros(10, dtype)

    def prepare(corpus, out, tokenizer, shard_tokens):
        n = int(corpus.name.split("-")[1])
        return {"tokens": n, "shards": 1, "dtype": "uint16", "prepare_s": 1.0, "wall_s": 2.0,
                "tokens_per_s": 4 * n, "peak_rss_bytes": 3 * n, "text_bytes": 5 * n,
                "shard_bytes": 2 * n}

    monkeypatch.setattr(dm, "run_child", lambda args: ("", 0.0, 123))
    monkeypatch.setattr(dm, "measure_prepare", prepare)
    monkeypatch.setattr(dm, "open_prepared", lambda out: (Shards(),))
    monkeypatch.setattr(dm, "batches_per_s", lambda data, seconds, seed:
                        7.0 if isinstance(data, Shards) else 11.0)
    assert dm.main(["--tokens", "3000", "--small", "1000", "--files", "1",
                    "--dir", str(tmp_path / "work")]) == 0
    record = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert [(r["tokens"], r["batches_per_s_shards"], r["batches_per_s_in_memory"])
            for r in record["rows"]] == [(1000, 7.0, 11.0), (3000, 7.0, 11.0)]
    assert record["extrapolated_1b"] == {
        "tokens": 10**9, "prepare_s": round(1e9 / 12000), "shard_bytes": 2 * 10**9,
        "text_bytes": 5 * 10**9, "peak_rss_bytes": 9000, "batches_per_s_shards": 7.0}
