"""minigpt plan: the shapes a budget allows. Parameters counted without allocating them
against the built model, the timed and the estimated steps against the speed they come from,
the memory against minigpt.performance's estimate, the compute-optimal mark against 20 tokens
per parameter, and the command's table and its refusal without a budget."""

import math
import os
import re
import subprocess
import sys

import pytest
import torch

from conftest import in_process
from minigpt import MiniGPT, resolve_config
from minigpt import plan as planning
from minigpt.errors import MiniGPTError
from minigpt.model import count_params
from minigpt.performance import peak_memory, train_flops_per_token

SMALL = dict(batch_size=2, block_size=16, dtype="float32")


def test_parameters_are_counted_without_building_the_model():
    cfg = resolve_config(overrides={"pos": "rope", "value_embeds": 2, "vocab_size": 300})
    for n_layer, n_embd in planning.LADDER[:4]:
        c = planning.shaped(cfg, n_layer, n_embd)
        assert c.model.n_embd % c.model.n_head == 0 and c.model.value_embeds <= n_layer
        assert count_params(c.model) == MiniGPT.from_config(c.model).num_params()


def test_steps_are_timed_until_too_slow_then_estimated(monkeypatch):
    monkeypatch.setattr(planning, "LADDER", [(1, 32), (2, 64), (4, 256)])
    cfg = resolve_config(overrides=SMALL)
    flops = [train_flops_per_token(planning.shaped(cfg, *s).model) * 2 * 16
             for s in planning.LADDER]
    timed = []

    def time_step(shaped, steps=2):  # a machine of exactly 1 TFLOP/s, as a clock would say
        timed.append(shaped.model.n_layer)
        return train_flops_per_token(shaped.model) * 2 * 16 / 1e12, torch.float32

    monkeypatch.setattr(planning, "time_step", time_step)
    # a budget between the second shape's step and the third's
    limit = math.sqrt(flops[1] * flops[2]) / 1e12
    shapes = planning.plan(cfg, resident=1000, max_step_s=limit)
    assert [s.measured for s in shapes] == [True, True, False] and timed == [1, 2]
    third = planning.shaped(cfg, *planning.LADDER[2])
    assert shapes[2].step_s == pytest.approx(flops[2] * shapes[1].step_s / flops[1])
    assert shapes[2].memory_bytes == sum(peak_memory(third, 1000, shapes[2].params).values())
    assert shapes[0].tokens_per_s == pytest.approx(32 / shapes[0].step_s)


def test_a_shape_is_timed_by_its_fastest_step(monkeypatch):
    """time_step asks for `steps` timed steps and keeps the fastest (the others: noise)."""
    asked = []

    def timed_steps(model, optimizer, batches, steps, grad_clip, micro):
        asked.append(steps)
        return [0.3, 0.1, 0.2]

    monkeypatch.setattr(planning, "timed_steps", timed_steps)
    cfg = planning.shaped(resolve_config(overrides=SMALL), 1, 32)
    assert planning.time_step(cfg, steps=3) == (0.1, torch.float32)
    assert asked == [3]


def test_a_shape_is_timed_in_the_dtype_its_run_would_choose(monkeypatch, tmp_path):
    """--dtype auto probes as training does: a batch that starts smaller is timed there too."""
    monkeypatch.setenv("MINIGPT_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(planning, "timed_steps", lambda *args: [0.1])
    asked = []
    monkeypatch.setattr(planning.precision, "choose_dtype",
                        lambda *args: asked.append(args[3:]) or (torch.bfloat16, "why"))
    cfg = planning.shaped(resolve_config(overrides={**SMALL, "batch_size": 8, "batch_start": 2}),
                          1, 32)
    assert planning.time_step(cfg) == (0.1, torch.bfloat16)
    assert asked == [(8, tmp_path / "precision.json", (2, 16))]


def untimed_plan(monkeypatch, **overrides):
    """plan() on the real LADDER with the step timer replaced by 1 s a step: nothing is run."""
    monkeypatch.setattr(planning, "time_step", lambda shaped, steps=2: (1.0, torch.float32))
    return planning.plan(resolve_config(overrides={"dtype": "float32", **overrides}))


def test_a_step_is_batch_times_grad_accum_times_block_tokens(monkeypatch):
    shapes = untimed_plan(monkeypatch, batch_size=4, block_size=32, grad_accum=3)
    assert len(shapes) == len(planning.LADDER)
    assert all(s.tokens_per_step == 4 * 3 * 32 for s in shapes)  # 384, by hand
    assert shapes[0].tokens_per_s == pytest.approx(384.0)  # at the 1 s a step it was given


def test_the_ladders_heads_are_64_channels_each_and_at_least_4(monkeypatch):
    """shaped()'s documented rule, "heads of 64 (at least 4 heads)", worked by hand for each
    width of the LADDER: 64, 128, 192 and 256 channels get 4 heads; 384 gets 6, 512 gets 8
    and 768 gets 12 (768 / 64)."""
    by_hand = {64: 4, 128: 4, 192: 4, 256: 4, 384: 6, 512: 8, 768: 12}
    shapes = untimed_plan(monkeypatch, batch_size=2, block_size=16)
    assert [(s.n_embd, s.n_head) for s in shapes] == [(w, by_hand[w]) for _, w in planning.LADDER]


def test_memory_is_estimated_in_the_dtype_the_steps_ran_in(monkeypatch):
    """A run whose steps ran in bf16 (--dtype auto's probe, say): every shape's memory, the
    estimated ones' too, is peak_memory's for bf16, which differs from float32's."""
    monkeypatch.setattr(planning, "time_step", lambda shaped, steps=2: (1.0, torch.bfloat16))
    cfg = resolve_config(overrides=SMALL)
    shapes = planning.plan(cfg, resident=1000)
    assert not all(s.measured for s in shapes)
    for s, (n_layer, n_embd) in zip(shapes, planning.LADDER, strict=True):
        c = planning.shaped(cfg, n_layer, n_embd)
        bf16 = sum(peak_memory(c, 1000, s.params, torch.bfloat16).values())
        assert s.memory_bytes == bf16 != sum(peak_memory(c, 1000, s.params).values())


def shape(params, step_s=1.0):
    return planning.Shape(1, 32, 2, params, 0, step_s, True, 1000)  # 1000 tokens a step


def test_compute_optimal_is_nearest_twenty_tokens_per_parameter():
    shapes = [shape(10_000), shape(50_000), shape(1_000_000)]
    assert planning.optimal(shapes, tokens=20 * 45_000).params == 50_000
    assert planning.optimal(shapes, tokens=20 * 800_000).params == 1_000_000
    # a time budget: 1000 tokens/s for 500 s is 500,000 tokens, 10 a parameter at 50,000
    slow = [shape(10_000, 0.1), shape(50_000, 1.0), shape(1_000_000, 100.0)]
    assert planning.optimal(slow, seconds=500).params == 50_000
    # both: the fewer of the tokens asked for and those the time allows
    assert planning.optimal(shapes, tokens=1e12, seconds=200).params == 10_000
    # whole steps only: in 150 s the 100-s step trains on 1000 tokens, not 1500; in 0.05 s
    # no shape takes a step, and none is marked
    assert planning.trained_on(slow[2], seconds=150) == 1000
    assert planning.optimal(slow, seconds=0.05) is None
    table = planning.format_plan(slow, seconds=0.05)
    assert "<-" not in table and "not one step of any shape fits in 0.05 s" in table
    assert [line.split()[-2] for line in table.splitlines()[2:5]] == ["0", "0", "0"]


def test_each_shape_is_compute_optimal_at_twenty_tokens_per_its_parameter():
    """Hoffmann et al.'s 20, by hand: shapes a factor of 2 apart, a budget of 20 tokens per
    parameter of one of them (so 10 or 40 per parameter of its neighbours) marks that one,
    as tokens or as the whole 1-s steps of 1,000 tokens the seconds allow."""
    shapes = [shape(10_000), shape(20_000), shape(40_000), shape(80_000)]
    for s in shapes:
        assert planning.optimal(shapes, tokens=20 * s.params) is s
        assert planning.optimal(shapes, seconds=20 * s.params / 1000) is s
        rows = planning.format_plan(shapes, tokens=20 * s.params).splitlines()[2:6]
        assert [row.endswith("20.0  <- compute-optimal") for row in rows] == [
            t is s for t in shapes]
    assert "nearest 20 tokens per parameter" in planning.format_plan(shapes, tokens=1e6)


def test_compute_optimal_is_nearest_by_ratio_not_by_difference():
    """500,000 tokens: 50 a parameter for 10,000 parameters (2.5 times 20), 5 for 100,000 (4
    times fewer than 20, though 5 is nearer 20 than 50 is): the smaller shape."""
    shapes = [shape(10_000), shape(100_000)]
    assert planning.optimal(shapes, tokens=500_000) is shapes[0]


def test_the_command_prints_the_ladder_and_marks_one_shape(capsys):
    r = in_process(capsys, "plan", "--tokens", "1e6", "--time-budget", "1h", "--batch-size", "1",
                   "--block-size", "8", "--block-start", "4", "--dtype", "float32")
    assert r.returncode == 0, r.stderr
    assert "the run's first 30%, growing from block 4, is slower a token" in r.stdout
    rows = [line for line in r.stdout.splitlines() if re.match(r"\s*\d+ x \d+", line)]
    assert len(rows) == len(planning.LADDER)
    params = [int(re.search(r"h\s+([\d,]+)", row)[1].replace(",", "")) for row in rows]
    marked = [p for p, row in zip(params, rows, strict=True) if "compute-optimal" in row]
    # the tokens in budget (whole steps in an hour), then tokens/param; a slow machine may
    # fit no step of the largest shapes (budget 0: never marked)
    budget = [int(re.search(r"([\d,]+)\s+[\d.]+\s*(<- compute-optimal)?$", row)[1]
                  .replace(",", "")) for row in rows]
    got = [min(1e6, tokens) for tokens in budget]
    nearest = min(((p, g) for p, g in zip(params, got, strict=True) if g),
                  key=lambda pg: abs(math.log(pg[1] / pg[0] / 20)))[0]
    assert marked == [nearest]
    assert "ETA" in r.stdout and "tokens in budget" in r.stdout


# In a fresh interpreter (pytest's has long counted parameters): the resident memory `minigpt
# plan` adds to every row, against what a training process holds once build_run has checked
# and made its model (the trainer's check_memory reads it then). Read before any count, it
# missed the torch._dynamo that counting on the meta device imports, about 150 MB: the small
# shapes' peaks a third low.
RESIDENT_SCRIPT = """
import sys, psutil, torch, minigpt.cli as cli, minigpt.plan as planning
from minigpt import MiniGPT, resolve_config, performance
seen = []
planning.plan = lambda cfg, resident, longest: seen.append(resident) or []
cli.main(["plan", "--time-budget", "1h"])
performance.check_model_fits(resolve_config("seed"), torch.device("cpu"))  # as build_run
MiniGPT.from_config(resolve_config("seed").model)
print("RESIDENT", seen[0], psutil.Process().memory_info().rss)
"""


def test_the_resident_memory_planned_is_read_once_a_model_is_made(tmp_path):
    r = subprocess.run([sys.executable, "-c", RESIDENT_SCRIPT], capture_output=True, text=True,
                       env=os.environ | {"MINIGPT_DATA_DIR": str(tmp_path)}, timeout=120)
    assert r.returncode == 0, r.stderr
    planned, trainer = map(int, r.stdout.split("RESIDENT")[1].split())
    assert trainer - planned < 50 * 2**20  # the seed model's weights: a few MB


def test_the_command_refuses_no_budget_in_one_line(capsys):
    r = in_process(capsys, "plan")
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "plan needs a budget" in r.stderr
    helped = in_process(capsys, "plan", "--help").stdout  # (train's help for it spoke of --steps)
    assert "the training time to plan for" in helped and "0: train for --steps" not in helped


def test_estimated_steps_are_marked_in_the_table():
    estimated = planning.Shape(1, 32, 2, 50_000, 0, 2.0, False, 1000)
    rows = planning.format_plan([shape(10_000), estimated], tokens=1e6).splitlines()[2:4]
    assert "~" not in rows[0] and "~" in rows[1]


def test_a_step_of_many_seconds_keeps_the_table_in_line():
    """A step of 1,363,753 ms, as an estimate for a large shape on a CPU can be, reads 22.7 min:
    in its column's width, as the milliseconds of a small shape's step are."""
    shapes = [shape(10_000, step_s=0.05), planning.Shape(8, 512, 8, 10**8, 0, 1363.753, False,
                                                         1000),
              planning.Shape(8, 384, 8, 10**7, 0, 99.9996, False, 1000)]  # 100,000 ms, rounded
    head, _, *rows = planning.format_plan(shapes, tokens=1e6).splitlines()[:5]
    assert [len(r.removesuffix("  <- compute-optimal")) for r in rows] == [len(head)] * 3
    assert " 50 ms " in rows[0] and " ~22.7 min " in rows[1] and " ~100 s " in rows[2]


def test_durations_read_in_the_largest_unit_there_are_two_of():
    """format_duration's own examples (3 s, 4.2 min, 3.1 h, 12.5 days), and where a unit
    starts: at two of it (119 s, then 2.0 min)."""
    cases = {3: "3 s", 4.2 * 60: "4.2 min", 3.1 * 3600: "3.1 h", 12.5 * 86400: "12.5 days",
             119: "119 s", 120: "2.0 min", 2 * 3600 - 1: "120.0 min", 2 * 86400: "2.0 days",
             1e9: "11,574.1 days"}  # (thousands separated, as the table's other figures)
    assert {s: planning.format_duration(s) for s in cases} == cases


def test_a_table_without_a_budget_is_a_clear_error():  # (it was min()'s empty-sequence error)
    with pytest.raises(MiniGPTError, match="a plan needs a budget"):
        planning.format_plan([shape(10_000)])


def test_value_embeddings_are_kept_only_where_a_shape_has_blocks_for_them():
    cfg = resolve_config(overrides={"n_layer": 6, "value_embeds": 3, "vocab_size": 300})
    assert [planning.shaped(cfg, n, 64).model.value_embeds for n in (2, 3, 4)] == [2, 3, 3]
    c = planning.shaped(cfg, 2, 64)
    assert count_params(c.model) == MiniGPT.from_config(c.model).num_params()


def test_a_shape_whose_estimated_step_is_exactly_the_limit_is_timed(monkeypatch):
    """Estimated only where the step would take longer than max_step_s: at the limit itself,
    it is timed. (Seconds per FLOP a power of two: every product here is exact.)"""
    monkeypatch.setattr(planning, "LADDER", [(1, 32), (2, 64), (4, 256)])
    cfg, per_flop = resolve_config(overrides=SMALL), 2.0 ** -40

    def flops(n_layer, n_embd):
        return train_flops_per_token(planning.shaped(cfg, n_layer, n_embd).model) * 2 * 16

    monkeypatch.setattr(planning, "time_step", lambda shaped, steps=2: (
        flops(shaped.model.n_layer, shaped.model.n_embd) * per_flop, torch.float32))
    shapes = planning.plan(cfg, max_step_s=flops(2, 64) * per_flop)
    assert [s.measured for s in shapes] == [True, True, False]


def test_an_estimate_is_at_the_speed_of_the_largest_shape_timed(monkeypatch):
    """Shapes timed at different speeds a FLOP (the second half as fast as the first): the
    estimate goes by the second, the largest timed, not the first."""
    monkeypatch.setattr(planning, "LADDER", [(1, 32), (2, 64), (4, 256)])
    cfg = resolve_config(overrides=SMALL)
    flops = [train_flops_per_token(planning.shaped(cfg, *s).model) * 2 * 16
             for s in planning.LADDER]
    per_flop = {1: 2.0 ** -40, 2: 2.0 ** -39}  # by depth

    def time_step(shaped, steps=2):
        n = shaped.model.n_layer
        return flops[[s[0] for s in planning.LADDER].index(n)] * per_flop[n], torch.float32

    monkeypatch.setattr(planning, "time_step", time_step)
    shapes = planning.plan(cfg, max_step_s=math.sqrt(flops[1] * flops[2]) * 2.0 ** -40)
    assert [s.measured for s in shapes] == [True, True, False]
    assert shapes[2].step_s == pytest.approx(flops[2] * 2.0 ** -39)


def test_a_shape_too_big_for_memory_is_not_timed_and_never_recommended(monkeypatch):
    """The machine has room for the first three shapes' peak (in float32) and not the fourth:
    the rest are estimated, not run, marked, and not compute-optimal even where their tokens
    per parameter are nearest 20; a machine without room for the smallest says so."""
    cfg = resolve_config(overrides={**SMALL, "batch_size": 64, "block_size": 128})
    need = [sum(peak_memory(c, 0, count_params(c.model)).values())
            for c in (planning.shaped(cfg, n, e) for n, e in planning.LADDER)]
    room = (need[2] + need[3]) // 2
    monkeypatch.setattr(planning.performance, "memory_at", lambda device: (0, room, "", 1))
    timed = []
    monkeypatch.setattr(planning, "time_step",
                        lambda c, steps=2: timed.append(c.model.n_embd) or (1.0, torch.float32))
    shapes = planning.plan(cfg, max_step_s=1e9)
    assert timed == [e for _, e in planning.LADDER[:3]]
    assert [s.fits for s in shapes] == [True] * 3 + [False] * 5
    assert all(not s.measured for s in shapes[3:])
    largest = 20 * shapes[-1].params  # a budget for the largest shape, which cannot run
    assert planning.optimal(shapes, tokens=largest) is shapes[2]
    table = planning.format_plan(shapes, tokens=largest).splitlines()
    rows = [line for line in table if re.match(r"\s*\d+ x \d+", line)]
    assert ["too big for this machine's memory" in row for row in rows] == [False] * 3 + [True] * 5
    monkeypatch.setattr(planning.performance, "memory_at", lambda device: (0, need[0] // 2, "", 1))
    with pytest.raises(MiniGPTError, match=r"not even the smallest shape, 2 x 64, fits in memory "
                                           r"at batch 64 x block 128: lower --batch-size"):
        planning.plan(cfg)


def test_a_time_budget_alone_is_said_as_a_duration(capsys, monkeypatch):
    monkeypatch.setattr(planning, "plan", lambda cfg, resident, longest: [shape(10_000)])
    r = in_process(capsys, "plan", "--time-budget", "10000d", "--dtype", "float32")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("planning 10,000.0 days: vocab 65,")
    r = in_process(capsys, "plan", "--time-budget", "0.001", "--dtype", "float32")
    assert r.stdout.startswith("planning 0.001 s: vocab 65,")


def test_a_shape_whose_step_outlasts_the_time_budget_is_not_timed(capsys, monkeypatch):
    """plan --time-budget 0.001 timed every shape up to 2 s a step before it said that not
    one step fits: a step longer than the whole budget is estimated, as a slower one is."""
    timed = []

    def time_step(shaped, steps=2):  # a machine of 1 GFLOP/s: every step above 1 ms
        timed.append(shaped.model.n_layer)
        return train_flops_per_token(shaped.model) * 2 * 16 / 1e9, torch.float32

    monkeypatch.setattr(planning, "time_step", time_step)
    flags = ["--batch-size", "2", "--block-size", "16", "--dtype", "float32"]
    r = in_process(capsys, "plan", "--time-budget", "0.001", *flags)
    assert r.returncode == 0, r.stderr
    assert timed == [planning.LADDER[0][0]] and "not one step of any shape fits" in r.stdout
    timed.clear()  # (a budget of tokens alone: timed up to MAX_STEP_S)
    assert in_process(capsys, "plan", "--tokens", "1e6", *flags).returncode == 0
    assert len(timed) > 1


def test_a_data_folder_that_is_a_file_is_refused_before_the_header(capsys, monkeypatch,
                                                                     tmp_path):
    """(It printed 'planning ...; timing each shape on this CPU...' and then the error.)"""
    (tmp_path / "data").write_text("not a folder\n")
    monkeypatch.setenv("MINIGPT_DATA_DIR", str(tmp_path / "data"))
    r = in_process(capsys, "plan", "--tokens", "1e6", "--batch-size", "1", "--block-size", "8")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().splitlines() == [
        f"minigpt: error: MINIGPT_DATA_DIR={tmp_path / 'data'} is a file; it names the folder "
        f"minigpt keeps its data in"]


def test_a_rows_memory_eta_and_tokens_per_parameter_in_their_units():
    """A shape of 10,000 parameters, 3 x 2**30 bytes at its peak, 1,000 tokens a 1 s step: its
    row reads 3.00 GiB (not 3.22, GB), an ETA of 3.0 h for 3,600 s x 3 x 1,000 tokens, and
    1,080.0 tokens per parameter."""
    tokens = 3 * 3600 * 1000
    big = planning.Shape(1, 32, 2, 10_000, 3 * 2**30, 1.0, True, 1000)
    row = planning.format_plan([big], tokens=tokens).splitlines()[2]
    assert re.search(r"\s3\.00 GiB\s.*\s3\.0 h\s+1,080\.0\b", row), row


def test_plan_plans_the_run_its_preset_makes(monkeypatch, capsys):
    """plan --preset fast sizes the fast preset's run (its batch, block, optimizer, dtype):
    the config plan times is the one the Python API resolves for that preset."""
    from minigpt.diagnostics.probes import SECTIONS

    planned = []
    monkeypatch.setattr(planning, "plan", lambda cfg, *a: planned.append(cfg) or [])
    monkeypatch.setattr(planning, "format_plan", lambda *a: "")
    assert in_process(capsys, "plan", "--preset", "fast", "--tokens", "1e6").returncode == 0
    fast = resolve_config("fast", None, {}, SECTIONS)
    assert planned == [fast] and fast != resolve_config("seed", None, {}, SECTIONS)
