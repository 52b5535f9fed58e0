"""The compute precision: the probe's decision on both of its answers, its cache, attention kept
in float32 under a CPU's bf16 autocast, and a run whose probe chose bf16 resuming exactly."""

import json
import logging
import math
import platform
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import CrashAt, native_bf16, tiny_config, without_speed
from minigpt import MiniGPTError, load_model, precision, resume_config, train
from minigpt.files import read_jsonl
from minigpt.model import MiniGPT, attend

CPU = torch.device("cpu")
NO_BF16 = {"bf16_matmul_flops": 1.5e9, "fp32_matmul_flops": 120e9}
BF16 = {"bf16_matmul_flops": 800e9, "fp32_matmul_flops": 150e9}


def fake_probe(monkeypatch, matmuls, steps=None):
    """The probe's measurements replaced by `matmuls` and `steps` (or `steps(batch, length)`);
    returns the calls made: "matmul" for the matmul rates, the batch size of each timing of the
    step at the full block size, (batch, length) at another."""
    calls = []
    monkeypatch.setattr(precision, "matmul_rates", lambda: calls.append("matmul") or matmuls)
    monkeypatch.setattr(precision, "cpu_flags", lambda: None)  # no x86 flags: the gate decides

    def step_times(model, batch, length):
        calls.append(batch if length == model.config.block_size else (batch, length))
        return steps(batch, length) if callable(steps) else steps

    monkeypatch.setattr(precision, "step_times", step_times)
    return calls


def no_probe(*args):
    raise AssertionError("the probe ran")


@pytest.mark.parametrize("matmuls, steps, expected", [
    (NO_BF16, None, torch.float32),  # AVX2: bf16 matmuls emulated, the step is not timed
    (BF16, {"fp32_step_s": 0.110, "bf16_step_s": 0.080}, torch.bfloat16),
    (BF16, {"fp32_step_s": 0.110, "bf16_step_s": 0.106}, torch.float32),  # < 5 % faster
    (BF16, {"fp32_step_s": 1.0, "bf16_step_s": 0.95}, torch.bfloat16),  # 5 % faster exactly
    (BF16, {"fp32_step_s": 0.110, "bf16_step_s": 0.250}, torch.float32),  # plain autocast's loss
    # native bf16 whose small gate matmul read near float32 (or below it, under load): timed
    ({"bf16_matmul_flops": 140e9, "fp32_matmul_flops": 150e9},
     {"fp32_step_s": 0.110, "bf16_step_s": 0.080}, torch.bfloat16),
    ({"bf16_matmul_flops": 74e9, "fp32_matmul_flops": 150e9}, None, torch.float32),  # < half
])
def test_the_probe_picks_bf16_only_where_the_step_is_faster(monkeypatch, tmp_path, matmuls,
                                                            steps, expected):
    calls = fake_probe(monkeypatch, matmuls, steps)
    model = MiniGPT(65, n_layer=1, n_embd=32, n_head=2, block_size=16)
    dtype, why = precision.choose_dtype("auto", CPU, model, 4, tmp_path / "p.json")
    assert dtype == expected and why.startswith("auto: ")
    assert calls == (["matmul"] if steps is None else ["matmul", 4])
    assert ("no native bf16" in why) == (steps is None)


def first_slower(batch, length):
    """bf16 twice as fast at the full batch of 8, 10 % slower at a smaller batch or length."""
    if (batch, length) == (8, 16):
        return {"fp32_step_s": 0.100, "bf16_step_s": 0.050}
    return {"fp32_step_s": 0.020, "bf16_step_s": 0.022}


@pytest.mark.parametrize("batch, first, expected, calls_made, first_said", [
    (8, None, torch.bfloat16, ["matmul", 8], ""),  # no schedule: the full shape alone
    (8, (8, 16), torch.bfloat16, ["matmul", 8], ""),  # a schedule that starts at full size
    (8, (2, 16), torch.float32, ["matmul", 8, 2], "2x16 22 ms"),  # --batch-start 2: bf16 loses
    (8, (8, 4), torch.float32, ["matmul", 8, (8, 4)], "8x4 22 ms"),  # --block-start 4
    (200, (100, 16), torch.bfloat16, ["matmul", precision.PROBE_BATCH], ""),  # both bounded: one
])
def test_a_run_that_starts_smaller_takes_bf16_only_if_it_wins_at_both_sizes(
        monkeypatch, tmp_path, batch, first, expected, calls_made, first_said):
    calls = fake_probe(monkeypatch, BF16, lambda b, t: first_slower(min(b, 8), t))
    model = MiniGPT(65, n_layer=1, n_embd=32, n_head=2, block_size=16)
    dtype, why = precision.choose_dtype("auto", CPU, model, batch, tmp_path / "p.json", first)
    assert dtype == expected and calls == calls_made
    first_part = f", of {first_said} in bf16, 20 in float32; bf16 must be 5 % faster at each" \
        if first_said else ""
    assert why == "auto: forward and backward of " + \
        f"{min(batch, precision.PROBE_BATCH)}x16 50 ms in bf16, 100 in float32" + first_part


@pytest.mark.parametrize("seconds", [0.0071, 0.0641, 0.504, 0.9996, 1.04, 12.3456])
def test_the_start_log_gives_a_step_in_milliseconds_never_in_e_notation(seconds):
    """A big model, or a busy host, takes over a second a step: '1,040 ms', not '1.04e+03'."""
    timings = [((32, 128), {"bf16_step_s": seconds, "fp32_step_s": seconds})]
    why = precision.decide(timings)[1]
    said = re.search(r"32x128 (\S+) ms in bf16, (\S+) in float32", why)
    assert said and said[1] == said[2] and "e" not in said[1]
    assert float(said[1].replace(",", "")) == pytest.approx(seconds * 1e3, rel=5e-3)


def test_the_answer_is_cached_per_machine_and_shape_and_the_batch_bounded(monkeypatch, tmp_path,
                                                                           caplog):
    """A batch far too big for memory is timed on PROBE_BATCH sequences, so that the memory
    check (which runs after the dtype is known) refuses it instead of the probe exhausting
    memory; batches within the bound are timed as they are."""
    cache = tmp_path / "precision.json"
    steps = {"fp32_step_s": 0.1, "bf16_step_s": 0.05}
    calls = fake_probe(monkeypatch, BF16, steps)
    small = MiniGPT(65, n_layer=1, n_embd=32, n_head=2, block_size=16)
    wide = MiniGPT(65, n_layer=1, n_embd=64, n_head=2, block_size=16)
    bound = precision.PROBE_BATCH
    with caplog.at_level(logging.INFO, logger="minigpt"):
        for model, batch in [(small, 4), (small, 4), (small, 8), (wide, 4), (wide, 4),
                             (small, 2_000_000), (small, bound)]:
            assert precision.choose_dtype("auto", CPU, model, batch, cache)[0] == torch.bfloat16
    assert calls == ["matmul", 4, 8, 4, bound]  # the gate once; each new shape once
    said = [r.getMessage() for r in caplog.records if "timing a step" in r.getMessage()]
    assert said == [f"--dtype auto: timing a step of {b} x 16 of the {m.num_params():,}-parameter "
                    f"model in float32 and in bfloat16, once for this machine and shape"
                    for m, b in [(small, 4), (small, 8), (wide, 4), (small, bound)]]  # (a minute)
    saved = json.loads(cache.read_text())
    assert list(saved) == [precision.machine_key()]
    assert len(saved[precision.machine_key()]["steps"]) == 4

    monkeypatch.setattr(torch, "get_num_threads", lambda: 99)  # another machine, as it were
    precision.choose_dtype("auto", CPU, small, 4, cache)
    assert calls[5:] == ["matmul", 4] and len(json.loads(cache.read_text())) == 2

    cache.write_text("{not json")  # a damaged cache is measured again and rewritten
    precision.choose_dtype("auto", CPU, small, 4, cache)
    assert calls[7:] == ["matmul", 4] and len(json.loads(cache.read_text())) == 1

    unwritable = tmp_path / "a-file" / "precision.json"  # (a read-only cache, as it were)
    unwritable.parent.write_text("")
    assert precision.choose_dtype("auto", CPU, small, 4, unwritable)[0] == torch.bfloat16
    assert calls[9:] == ["matmul", 4]  # measured, answered, not kept


@pytest.mark.parametrize("flags", [{"avx512_bf16"}, {"amx_bf16", "amx_tile"}])
def test_a_cpu_whose_flags_name_native_bf16_times_the_step_and_never_the_gate(
        monkeypatch, tmp_path, flags):
    """A busy host can make the gate's small matmul read bf16 far below float32 on a CPU
    with avx512_bf16: the flags are believed, and the step decides."""
    busy = {"bf16_matmul_flops": 5.6e9, "fp32_matmul_flops": 108.7e9}  # (read under load)
    calls = fake_probe(monkeypatch, busy, {"fp32_step_s": 0.1, "bf16_step_s": 0.05})
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2", "fma", *flags})
    model = MiniGPT(65, n_layer=1, n_embd=32, n_head=2, block_size=16)
    dtype, why = precision.choose_dtype("auto", CPU, model, 4, tmp_path / "p.json")
    assert dtype == torch.bfloat16 and calls == [4] and "no native" not in why


def test_an_x86_cpu_whose_flags_name_no_native_bf16_takes_float32_and_times_nothing(
        monkeypatch, tmp_path):
    """AVX2 alone: float32 whatever a timing would read. On a busy host the gate's matmuls
    read bf16 near float32's speed and the step's passes anything (an AVX2 EPYC with other
    jobs on its cores: 1.4 against 2.1 GFLOP/s, then a step of 55 ms in bf16 against 155 in
    float32), and a cache that kept such figures is not believed either."""
    model = MiniGPT(65, n_layer=1, n_embd=32, n_head=2, block_size=16)
    cache = tmp_path / "precision.json"
    cache.write_text(json.dumps({precision.machine_key(): {
        **BF16, "steps": {precision.shape_key(model, 4): {"fp32_step_s": 0.155,
                                                            "bf16_step_s": 0.055}}}}))
    calls = fake_probe(monkeypatch, BF16, {"fp32_step_s": 0.155, "bf16_step_s": 0.055})
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2", "fma", "avx512f"})
    dtype, why = precision.choose_dtype("auto", CPU, model, 4, cache)
    assert dtype == torch.float32 and calls == []
    assert why == "auto: no native bf16, the CPU's flags name neither avx512_bf16 nor amx_bf16"


@pytest.mark.parametrize("cpuinfo, expected", [
    ("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 fma\n\n", {"fpu", "avx2", "fma"}),
    ("processor\t: 0\nflags\t\t: avx512f avx512_bf16\nbugs\t\t: spectre\n",
     {"avx512f", "avx512_bf16"}),
    ("processor\t: 0\nFeatures\t: fp asimd bf16\nCPU implementer\t: 0x41\n", None),  # ARM
    (None, None),  # macOS: no /proc/cpuinfo
])
def test_the_flags_are_an_x86_cpus_and_none_elsewhere(monkeypatch, tmp_path, cpuinfo, expected):
    fake = tmp_path / "cpuinfo"
    if cpuinfo is not None:
        fake.write_text(cpuinfo)
    monkeypatch.setattr(precision, "Path", lambda p: fake if p == "/proc/cpuinfo" else Path(p))
    assert precision.cpu_flags() == expected
    assert precision.bf16_flags() == sorted((expected or set()) & {"avx512_bf16"})


@pytest.mark.parametrize("damaged", [
    [1, 2],  # another program's JSON
    {"MACHINE": None},
    {"MACHINE": {"bf16_matmul_flops": 800e9}},  # a rate missing
    {"MACHINE": {"bf16_matmul_flops": "fast", "fp32_matmul_flops": 150e9}},
    {"MACHINE": {**BF16, "steps": [1]}},
    {"MACHINE": {**BF16, "steps": {"SHAPE": {"fp32_step_s": 0.1}}}},  # a time missing
    {"MACHINE": {**BF16, "steps": {"SHAPE": {"fp32_step_s": 0.1, "bf16_step_s": True}}}},
    {"MACHINE": {**BF16, "steps": {"SHAPE": {"fp32_step_s": 0.1, "bf16_step_s": 0}}}},  # (no
    # pass takes no time: bf16 would win any comparison with it)
])
def test_a_damaged_cache_is_measured_again(monkeypatch, tmp_path, damaged):
    """Whatever part of precision.json is not the probe's figures is measured again and
    rewritten, as an unreadable file is."""
    model = MiniGPT(65, n_layer=1, n_embd=32, n_head=2, block_size=16)
    text = json.dumps(damaged).replace("MACHINE", precision.machine_key())
    cache = tmp_path / "precision.json"
    cache.write_text(text.replace("SHAPE", precision.shape_key(model, 4)))
    calls = fake_probe(monkeypatch, BF16, {"fp32_step_s": 0.1, "bf16_step_s": 0.05})
    assert precision.choose_dtype("auto", CPU, model, 4, cache)[0] == torch.bfloat16
    assert calls[-1] == 4  # the step timed again
    saved = json.loads(cache.read_text())[precision.machine_key()]
    assert saved["steps"][precision.shape_key(model, 4)] == {"fp32_step_s": 0.1,
                                                             "bf16_step_s": 0.05}
    assert precision.choose_dtype("auto", CPU, model, 4, cache)[0] == torch.bfloat16
    assert calls.count(4) == 1  # and then read from the cache


def test_a_named_dtype_is_not_probed(monkeypatch):
    monkeypatch.setattr(precision, "matmul_rates", no_probe)
    model = MiniGPT(65, n_layer=1, n_embd=32, n_head=2, block_size=16)
    assert precision.choose_dtype("bfloat16", CPU, model) == (torch.bfloat16, "as set")
    assert precision.choose_dtype("float32", CPU, model) == (torch.float32, "as set")
    with pytest.raises(MiniGPTError, match="unknown dtype 'float8'"):
        precision.choose_dtype("float8", CPU, model)


def test_auto_off_a_cpu_is_not_probed(monkeypatch):
    """A GPU: bf16 where it has bf16 tensor cores (Ampere, 8.0, on; a V100's 7.0 or a T4's 7.5
    only emulate it, though torch.cuda.is_bf16_supported() says yes); MPS: float32."""
    monkeypatch.setattr(precision, "matmul_rates", no_probe)
    model = MiniGPT(65, n_layer=1, n_embd=32, n_head=2, block_size=16)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    for capability, expected in [((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16),
                                 ((7, 5), torch.float32), ((7, 0), torch.float32)]:
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, c=capability: c)
        assert precision.choose_dtype("auto", torch.device("cuda"), model)[0] == expected
    assert precision.choose_dtype("auto", torch.device("mps"), model)[0] == torch.float32


def test_the_timed_step_leaves_the_model_and_the_random_state_as_they_were():
    """step_times, which the real probe reaches only on a CPU with native bf16, on a model whose
    dropout draws from the global random state."""
    model = MiniGPT(65, n_layer=1, n_embd=16, n_head=2, block_size=8, dropout=0.5)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    assert all(0 < t < 60 for t in precision.step_times(model, 1, 8, least_s=0).values())
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)


@pytest.mark.parametrize("option", [dict(n_layer=2), dict(n_head=4), dict(mlp="swiglu"),
                                    dict(pos="rope"), dict(block_size=8), dict(bigram=True),
                                    dict(value_embeds=1), dict(norm="rmsnorm"),
                                    dict(logit_cap=15.0)])
def test_the_cached_step_times_tell_apart_each_shape_they_depend_on(option):
    # the lesson's model keeps the key it always had (a cache written before stays good)
    assert precision.shape_key(MiniGPT(65), 32) == "4x64 h4 gelu learned vocab 65, batch 32x128"
    assert precision.shape_key(MiniGPT(65, logit_cap=15, bigram=True), 4, 64) == \
        "4x64 h4 gelu learned vocab 65 bigram=True logit_cap=15.0, batch 4x64"
    base = dict(n_layer=1, n_embd=32, n_head=2, block_size=16)
    small = precision.shape_key(MiniGPT(65, **base), 4)
    assert precision.shape_key(MiniGPT(65, **{**base, **option}), 4) != small
    assert precision.shape_key(MiniGPT(66, **base), 4) != small


def test_the_machine_is_keyed_by_its_cpus_model_name():
    cpuinfo = Path("/proc/cpuinfo")
    text = cpuinfo.read_text() if cpuinfo.exists() else ""
    names = re.findall(r"^model name\s*:\s*(.*?)\s*$", text, re.MULTILINE)
    if not names:
        pytest.skip("no model name in /proc/cpuinfo")
    assert precision.cpu_name() == names[0]
    assert precision.machine_key().startswith(names[0] + " | torch ")


def test_the_real_probe_never_chooses_bf16_where_it_is_slower(tmp_path):
    """Measured on this CPU: on an x86 CPU without AVX-512 BF16 or AMX the answer is float32;
    elsewhere it follows the figures the probe recorded."""
    model = MiniGPT(65, n_layer=2, n_embd=64, n_head=4, block_size=64)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    cache = tmp_path / "precision.json"
    dtype, why = precision.choose_dtype("auto", CPU, model, 8, cache)
    machine = json.loads(cache.read_text())[precision.machine_key()]
    if platform.system() == "Linux" and platform.machine() == "x86_64" and not native_bf16():
        assert dtype == torch.float32 and "no native bf16" in why
        assert machine == {}  # the flags said: nothing timed
    steps = next(iter(machine.get("steps", {}).values()), None)  # recorded where bf16 is faster
    faster = steps is not None and steps["bf16_step_s"] <= 0.95 * steps["fp32_step_s"]
    assert (dtype == torch.bfloat16) == faster  # the rule, as the docs state it
    # the probe leaves the model and the random state as they were
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)


def test_attention_stays_float32_under_bf16_autocast_on_a_cpu():
    q, k, v = torch.randn(3, 2, 4, 16, 8).bfloat16()  # (B, nh, T, hs) each
    with torch.autocast("cpu", torch.bfloat16):
        y = attend(q, k, v, is_causal=True)
        plain = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert y.dtype == torch.float32 and plain.dtype == torch.bfloat16
    exact = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True)
    torch.testing.assert_close(y, exact, rtol=0, atol=0)
    # outside autocast attend is scaled_dot_product_attention itself
    assert torch.equal(attend(q, k, v, is_causal=True),
                       F.scaled_dot_product_attention(q, k, v, is_causal=True))


def test_bf16_forward_and_gradients_follow_float32():
    """The loop's autocast: bf16 matmuls with float32 weights, or nothing for float32."""
    model = MiniGPT(65, n_layer=2, n_embd=32, n_head=2, block_size=16)
    idx = torch.randint(65, (4, 16))
    with torch.autocast("cpu", torch.float32, enabled=False):
        logits32, loss32 = model(idx, idx)
    loss32.backward()
    grads32 = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    with torch.autocast("cpu", torch.bfloat16):
        logits16, loss16 = model(idx, idx)
    loss16.backward()
    assert logits32.dtype == torch.float32
    assert logits16.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert loss16.dtype == torch.float32
    assert abs(loss16.item() - loss32.item()) < 0.02 and loss16.item() != loss32.item()
    cos = F.cosine_similarity(torch.cat([g.flatten() for g in grads32]),
                              torch.cat([p.grad.flatten() for p in model.parameters()]), dim=0)
    assert cos > 0.99


def recorded_dtype(folder):
    """(the dtype the run computed in, the one its config asks for) from its config.json."""
    record = json.loads((folder / "config.json").read_text())
    return record["environment"]["dtype"], record["config"]["train"]["dtype"]


def test_a_run_the_probe_put_in_bf16_records_it_and_resumes_exactly(monkeypatch, small_text,
                                                                     tmp_path, caplog):
    """Both answers of the probe reach the run: its dtype, the start log and config.json; the
    resumed run computes as the first did without probing again (an uninterrupted run is the
    oracle)."""
    monkeypatch.setenv("MINIGPT_DATA_DIR", str(tmp_path / "cache"))  # the probe's cache
    caplog.set_level("INFO", logger="minigpt")
    cfg = lambda: tiny_config(small_text, steps=16, eval_every=4, log_every=1)  # noqa: E731
    fake_probe(monkeypatch, NO_BF16)
    fp32 = train(cfg(), tmp_path / "fp32", progress=False)
    assert recorded_dtype(tmp_path / "fp32") == ("float32", "float32")
    assert "float32 matmuls (auto: no native bf16" in caplog.text

    monkeypatch.setenv("MINIGPT_DATA_DIR", str(tmp_path / "cache2"))  # another machine
    fake_probe(monkeypatch, BF16, {"fp32_step_s": 0.1, "bf16_step_s": 0.05})
    straight = train(cfg(), tmp_path / "straight", progress=False)
    assert recorded_dtype(tmp_path / "straight") == ("bfloat16", "bfloat16")
    assert "bfloat16 matmuls (auto: forward and backward of 8x32 50 ms in bf16, 100 in float32)" \
        in caplog.text
    assert straight.summary["final_val_loss"] != fp32.summary["final_val_loss"]

    with pytest.raises(KeyboardInterrupt):
        train(cfg(), tmp_path / "resumed", progress=False, probes=[CrashAt(10)])
    monkeypatch.setattr(precision, "matmul_rates", no_probe)
    train(resume_config(tmp_path / "resumed"), tmp_path / "resumed", resume=True, progress=False)
    assert recorded_dtype(tmp_path / "resumed") == ("bfloat16", "bfloat16")
    assert without_speed(read_jsonl(tmp_path / "resumed" / "metrics.jsonl")) == \
        without_speed(read_jsonl(tmp_path / "straight" / "metrics.jsonl"))
    a = load_model(tmp_path / "straight", "last")[0].state_dict()
    b = load_model(tmp_path / "resumed", "last")[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_whose_schedules_start_smaller_is_probed_at_its_first_size(monkeypatch,
                                                                       small_text, tmp_path):
    """--batch-start and --block-start: the probe times the run's first (B, T) too, and there
    bf16 loses, so the run computes in float32."""
    monkeypatch.setenv("MINIGPT_DATA_DIR", str(tmp_path / "cache"))
    calls = fake_probe(monkeypatch, BF16, first_slower)
    train(tiny_config(small_text, steps=4, eval_every=4, block_size=16, batch_start=2,
                      block_start=4), tmp_path / "grown", progress=False)
    assert calls == ["matmul", 8, (2, 4)]  # the full batch, then the first steps'
    assert recorded_dtype(tmp_path / "grown") == ("float32", "float32")


def test_each_timing_is_taken_in_its_own_dtype_at_the_length_asked(monkeypatch):
    """step_times: the float32 figure from float32 passes, the bf16 one from bf16 passes, at the
    batch and length given; matmul_rates: each rate measured in its own dtype."""
    asked = []

    def fake_seconds(model, idx, dtype):
        asked.append((tuple(idx.shape), dtype))
        return {torch.float32: 0.25, torch.bfloat16: 0.5}[dtype]

    monkeypatch.setattr(precision, "pass_seconds", fake_seconds)
    model = MiniGPT(65, n_layer=1, n_embd=16, n_head=2, block_size=16)
    assert precision.step_times(model, 3, 4) == {"fp32_step_s": 0.25, "bf16_step_s": 0.5}
    assert set(asked) == {((3, 4), torch.float32), ((3, 4), torch.bfloat16)}
    import minigpt.performance

    rates = {torch.float32: 7.0, torch.bfloat16: 11.0}
    monkeypatch.setattr(minigpt.performance, "matmul_peak",
                        lambda device, dtype, seconds, n: rates[dtype])
    assert precision.matmul_rates() == {"bf16_matmul_flops": 11.0, "fp32_matmul_flops": 7.0}


def timed_passes(monkeypatch, model, durations):
    """A clock that each forward of `model` advances by the next of `durations`; returns the
    (dtype, length) of each forward."""
    seen, clock, durations = [], [0.0], iter(durations)

    def hook(module, inputs, output):
        seen.append((output.dtype, inputs[0].shape[1]))
        clock[0] += next(durations)

    model.lm_head.register_forward_hook(hook)
    monkeypatch.setattr(precision.time, "perf_counter", lambda: clock[0])
    return seen


def test_the_probe_takes_the_dtypes_by_turns_each_its_fastest_pass_after_a_warm_up(
        monkeypatch):
    """A burst of other work three passes long (say, another process) slows a float32 and a
    bf16 pass alike, not all three of float32's; the warm-ups, the fastest of all, are not
    counted; each forward multiplies in the dtype it times, at the length asked."""
    model = MiniGPT(65, n_layer=1, n_embd=16, n_head=2, block_size=16)
    fp32, bf16, burst = 2.0, 1.0, 100.0
    seen = timed_passes(monkeypatch, model, [0.001, burst, burst, burst] + [fp32, bf16] * 3)
    assert precision.step_times(model, 2, 8) == {"fp32_step_s": fp32, "bf16_step_s": bf16}
    assert seen == [(torch.float32, 8), (torch.bfloat16, 8)] * 4


def test_a_step_of_a_few_ms_is_timed_until_each_dtype_has_had_its_tenth_of_a_second(
        monkeypatch):
    model = MiniGPT(65, n_layer=1, n_embd=16, n_head=2, block_size=16)
    seen = timed_passes(monkeypatch, model, [1 / 64] * 1000)  # (exact in binary)
    precision.step_times(model, 2, 8)  # a warm-up, then 7 passes of 1/64 s each
    assert len(seen) == 2 * (1 + math.ceil(precision.PROBE_SECONDS * 64))
    seen.clear()
    precision.step_times(model, 2, 8, most=5)  # (a cap on the passes)
    assert len(seen) == 2 * (1 + 5)


def test_the_faster_dtype_is_timed_for_its_tenth_of_a_second_too_and_a_stall_is_not_its_time(
        monkeypatch):
    """bf16 passes four times as fast as float32's: the passes go on until bf16 too has had
    PROBE_SECONDS (not only float32, which had it at the third round), and the last round, a
    stall of both, is neither's time: each gives its fastest pass, not its last."""
    model = MiniGPT(65, n_layer=1, n_embd=16, n_head=2, block_size=16)
    rounds = math.ceil(precision.PROBE_SECONDS * 64)  # the warm-up and those just short of it
    durations = [1 / 16, 1 / 64] * rounds + [1 / 2, 1 / 4]  # (float32's, bf16's by turns)
    seen = timed_passes(monkeypatch, model, durations)
    assert precision.step_times(model, 2, 8) == {"fp32_step_s": 1 / 16, "bf16_step_s": 1 / 64}
    assert len(seen) == len(durations)  # the stalled round was the last one run


def test_a_timed_pass_is_a_forward_and_its_backward(monkeypatch):
    """pass_seconds counts the backward (about twice the forward's work) as well: a clock the
    forward advances by 1 s and the backward by 2 s reads 3 s."""
    model = MiniGPT(65, n_layer=1, n_embd=16, n_head=2, block_size=16)
    clock = [0.0]

    def tick(seconds):
        def hook(*args):
            clock[0] += seconds
        return hook

    model.lm_head.register_forward_hook(tick(1.0))
    model.lm_head.register_full_backward_hook(tick(2.0))
    monkeypatch.setattr(precision.time, "perf_counter", lambda: clock[0])
    idx = torch.randint(65, (2, 8), generator=torch.Generator().manual_seed(0))
    assert precision.pass_seconds(model, idx, torch.float32) == 3.0
    assert model.lm_head.weight.grad is not None


def test_a_cache_that_already_holds_the_answer_is_not_written_again(monkeypatch, tmp_path):
    cache = tmp_path / "precision.json"
    calls = fake_probe(monkeypatch, BF16, {"fp32_step_s": 0.1, "bf16_step_s": 0.05})
    model = MiniGPT(65, n_layer=1, n_embd=32, n_head=2, block_size=16)
    assert precision.choose_dtype("auto", CPU, model, 4, cache)[0] == torch.bfloat16
    written = cache.read_text()
    monkeypatch.setattr(precision, "atomic_write_text", no_probe)  # (any write fails the test)
    assert precision.choose_dtype("auto", CPU, model, 4, cache)[0] == torch.bfloat16
    assert calls == ["matmul", 4] and cache.read_text() == written


def test_auto_on_another_accelerator_is_float32_unprobed(monkeypatch):
    monkeypatch.setattr(precision, "matmul_rates", no_probe)
    model = MiniGPT(65, n_layer=1, n_embd=32, n_head=2, block_size=16)
    for kind in ("xpu", "meta"):
        assert precision.choose_dtype("auto", torch.device(kind), model)[0] == torch.float32


def test_the_cache_is_replaced_whole_never_rewritten_in_place(monkeypatch, tmp_path):
    """Runs starting at once share precision.json: one that opened it before another's write
    still reads the whole file it opened (a rewrite in place truncates it under the reader,
    and a run killed mid-write would leave half a file, the kept peaks lost with it)."""
    cache = tmp_path / "precision.json"
    fake_probe(monkeypatch, NO_BF16)
    model = MiniGPT(65, n_layer=1, n_embd=32, n_head=2, block_size=16)
    precision.choose_dtype("auto", CPU, model, 4, cache)
    with cache.open() as reader:
        written = cache.read_text()
        monkeypatch.setattr(precision, "machine_key", lambda: "another CPU")
        precision.choose_dtype("auto", CPU, model, 4, cache)  # (adds its entry)
        assert reader.read() == written and len(json.loads(cache.read_text())) == 2
