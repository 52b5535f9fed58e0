"""The fast paths change speed, not what is learned: the device-side skip of non-finite steps
against the host-side one, bf16 and compiled training against float32 eager, and the per-device
choices (FLOP counts against PyTorch's counter: test_options)."""

import json
import logging
import math
import re
from types import SimpleNamespace

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from conftest import tiny_config
from minigpt import MiniGPT, MiniGPTError, load_model, performance, resolve_config, train
from minigpt.files import read_jsonl
from minigpt.model import count_params
from minigpt.performance import best_rate, choose_compile, matmul_peak, peak_flops
from minigpt.step import step_unless_nonfinite

CPU = torch.device("cpu")


def test_matmul_peak_is_a_plausible_rate(monkeypatch):
    seen, real = [], performance.matmul_peak  # each rate peak_flops measured, as measured
    monkeypatch.setattr(performance, "matmul_peak",
                        lambda *args, **kwargs: seen.append(real(*args, **kwargs)) or seen[-1])
    assert peak_flops(CPU, torch.bfloat16, seconds=0.05) == max(seen)  # the better of the two
    assert len(seen) == 2 and 1e8 < seen[0] < 1e14  # float32: 0.1 GFLOP/s to 100 TFLOP/s


def test_mfus_denominator_on_a_cpu_is_the_highest_peak_the_machine_has_shown(monkeypatch,
                                                                              tmp_path):
    """A peak read while other work held the cores (50) does not replace a higher one (200);
    a bf16 run's is the better of bf16's and float32's (as peak_flops measures it), a float32
    run's float32's alone; without a cache, or on a GPU, the peak measured now; a damaged
    figure (JSON's Infinity) is measured again."""
    from minigpt.precision import highest_peak, machine_key

    readings = iter([200.0, 50.0, 70.0, 300.0, 60.0, 10.0, 80.0, 90.0])
    monkeypatch.setattr(performance, "peak_flops", lambda device, dtype: next(readings))
    cache = tmp_path / "precision.json"
    assert [highest_peak(CPU, torch.float32, cache) for _ in range(2)] == [200.0, 200.0]
    assert highest_peak(CPU, torch.bfloat16, cache) == 200.0  # (bf16 read 70)
    assert highest_peak(CPU, torch.float32, cache) == 300.0  # a higher one is kept
    assert highest_peak(CPU, torch.float32, None) == 60.0
    assert highest_peak(torch.device("cuda"), torch.float32, cache) == 10.0
    cache.write_text(json.dumps({machine_key(): {"peak_flops_float32": 1e9}}).replace(
        "1000000000.0", "Infinity"))
    assert highest_peak(CPU, torch.float32, cache) == 80.0
    assert highest_peak(CPU, torch.bfloat16, cache) == 90.0  # (bf16's own: above float32's)


def test_a_bf16_runs_peak_is_kept_as_bf16s_not_as_a_float32_runs_denominator(monkeypatch,
                                                                            tmp_path):
    """bf16's peak (the better of bf16's and float32's matmuls) is above what a float32 run can
    reach: a float32 run after it divides by float32's own peak."""
    from minigpt.precision import highest_peak, machine_key

    readings = iter([500.0, 100.0])
    monkeypatch.setattr(performance, "peak_flops", lambda device, dtype: next(readings))
    cache = tmp_path / "precision.json"
    assert highest_peak(CPU, torch.bfloat16, cache) == 500.0
    assert highest_peak(CPU, torch.float32, cache) == 100.0
    assert json.loads(cache.read_text())[machine_key()] == {"peak_flops_bfloat16": 500.0,
                                                            "peak_flops_float32": 100.0}


def test_a_run_divides_by_the_peak_kept_in_the_data_folder(small_text, tmp_path, monkeypatch,
                                                           caplog):
    """The loop's MFU denominator is highest_peak's over $MINIGPT_DATA_DIR/precision.json: a
    peak an earlier run kept there (1,000 TFLOP/s) stands above the one read now (1 GFLOP/s)."""
    from minigpt.precision import machine_key

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # (the machine's key names its threads)
    try:
        monkeypatch.setenv("MINIGPT_DATA_DIR", str(tmp_path / "cache"))
        (tmp_path / "cache").mkdir()
        (tmp_path / "cache" / "precision.json").write_text(
            json.dumps({machine_key(): {"peak_flops_float32": 1e15}}))
        monkeypatch.setattr(performance, "peak_flops", lambda device, dtype: 1e9)
        with caplog.at_level(logging.INFO, logger="minigpt"):
            train(tiny_config(small_text, steps=2, eval_every=2, dtype="float32"), tmp_path / "r",
                  progress=False)
    finally:
        torch.set_num_threads(threads)
    assert "matmul peak 1,000,000 GFLOP/s" in caplog.text
    assert "on cpu, 1 thread (" in caplog.text  # (as torch was told: not '1 threads')


def test_matmul_peak_counts_the_flops_of_one_product(monkeypatch):
    """At one product a second (the timer replaced), the peak is one n x n @ n x n product's
    FLOPs: 2 n^3 by hand (n^2 dot products of n multiplies and n adds), and as PyTorch's own
    counter counts one torch.mm."""
    monkeypatch.setattr(performance, "best_rate", lambda work, seconds: 1.0)
    n = 64
    with FlopCounterMode(display=False) as counter:
        torch.mm(torch.randn(n, n), torch.randn(n, n))
    assert counter.get_total_flops() == 2 * n**3
    assert matmul_peak(CPU, torch.float32, n=n) == 2 * n**3


def test_peak_is_the_fastest_burst_not_the_mean(monkeypatch):
    """A cold start (here: the first five calls take 40 ms, the rest 1 ms) must not drag the
    measured peak down, as it would a mean over the whole measurement."""
    calls, now = [], SimpleNamespace(s=0.0)  # a clock that only the calls move
    monkeypatch.setattr(performance, "time", SimpleNamespace(perf_counter=lambda: now.s))

    def work():
        calls.append(None)
        now.s += 0.040 if len(calls) <= 5 else 0.001

    rate = best_rate(work, seconds=0.3, bursts=10)
    assert rate == pytest.approx(1000)  # 1 ms a call once warm
    assert rate > 2 * len(calls) / now.s  # the mean over the whole measurement


def test_a_slow_burst_at_the_end_does_not_replace_a_faster_one(monkeypatch):
    """Another process waking up late in the measurement (here: every call after the tenth
    takes 10 ms, those before 1 ms) slows the last bursts only: the peak is still 1000/s."""
    calls, now = [], SimpleNamespace(s=0.0)
    monkeypatch.setattr(performance, "time", SimpleNamespace(perf_counter=lambda: now.s))

    def work():
        calls.append(None)
        now.s += 0.001 if len(calls) <= 10 else 0.010

    assert best_rate(work, seconds=0.1, bursts=10) == pytest.approx(1000)


def test_the_memory_check_counts_every_process_on_this_machine(monkeypatch):
    """torchrun's processes on one machine each need the run's memory: room for one process
    and a half fits one, not two; LOCAL_WORLD_SIZE (else WORLD_SIZE, else 1) says how many."""
    cfg = resolve_config(overrides=dict(batch_size=8))
    n = count_params(cfg.model)
    one = sum(performance.peak_memory(cfg, 0, n).values())  # (nothing resident)
    for processes, fits in ((1, True), (2, False)):
        monkeypatch.setattr(performance, "memory_at",
                            lambda device, k=processes: (0, int(1.5 * one), "available", k))
        assert performance.fits_in_memory(cfg, CPU, n) is fits
    monkeypatch.undo()
    for env, processes in (({}, 1), ({"WORLD_SIZE": "4"}, 4),
                           ({"WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2"}, 2)):
        for name in ("WORLD_SIZE", "LOCAL_WORLD_SIZE"):
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        assert performance.memory_at(CPU)[3] == processes


def test_a_deep_models_extrapolated_count_is_its_count(monkeypatch):
    """Past 64 blocks the parameters are extrapolated from 2 and 3 blocks: the refusal names
    the count that counting every block gives."""
    cfg = resolve_config(overrides=dict(n_layer=65, n_embd=32, n_head=2))
    monkeypatch.setattr(performance, "memory_at", lambda device: (0, 0, "available", 1))
    with pytest.raises(MiniGPTError, match=f"a model of {count_params(cfg.model):,} parameters "
                                           f"\\(65 layers"):
        performance.check_model_fits(cfg, CPU)


def test_auto_compiles_on_cuda_only():  # the dtype's choice: tests/test_precision.py
    cuda = torch.device("cuda")  # (a device name: no GPU needed to ask about one)
    assert [choose_compile(c, d) for c in ("auto", "on", "off") for d in (CPU, cuda)] == [
        False, True, True, True, False, False]


def six_steps(optimizer_kind: str, fused: bool, oracle: bool):
    """Six AdamW or SGD steps on a small model, steps 1 and 4 being bad. Through
    step_unless_nonfinite, a bad step has NaN gradients; in the oracle it is a good batch
    whose step is simply not taken. Returns the parameters, the optimizer state and the count
    of skipped steps."""
    torch.manual_seed(0)
    model = MiniGPT(20, n_embd=16, n_head=2, n_layer=1, block_size=8)
    params = list(model.parameters())
    if optimizer_kind == "adamw":
        opt = torch.optim.AdamW(params, lr=1e-2, fused=fused, foreach=not fused)
    else:
        opt = torch.optim.SGD(params, lr=1e-1, momentum=0.9)
    idx = torch.randint(0, 20, (4, 8), generator=torch.Generator().manual_seed(1))
    skipped = torch.zeros(())
    for step in range(6):
        bad = step in (1, 4)
        opt.zero_grad(set_to_none=True)
        _, loss = model(idx, idx)
        (loss * (math.nan if bad and not oracle else 1.0)).backward()
        norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        if not oracle:
            skipped += ~torch.isfinite(norm)
            step_unless_nonfinite(opt, norm)
        elif not bad:
            opt.step()
    state = [t for s in opt.state.values() for t in s.values() if torch.is_tensor(t)]
    return params, state, skipped.item()


@pytest.mark.parametrize("kind, fused", [("adamw", True), ("adamw", False), ("sgd", False)])
def test_a_nonfinite_step_changes_nothing(kind, fused):
    """Fused AdamW skips on the device, the others on the host: either way, exactly as if the
    step had not been taken (weights and optimizer state, bit for bit)."""
    params, state, skipped = six_steps(kind, fused, oracle=False)
    want_params, want_state, _ = six_steps(kind, fused, oracle=True)
    assert skipped == 2
    for got, want in zip(params + state, want_params + want_state, strict=True):
        assert torch.equal(got, want)


def short_run(text, tmp_path, name, **overrides):
    cfg = tiny_config(text, steps=40, eval_every=20, log_every=10, **overrides)
    summary = train(cfg, tmp_path / name, progress=False).summary
    return summary, read_jsonl(tmp_path / name / "metrics.jsonl")


def test_bf16_training_tracks_float32_and_rows_carry_mfu(small_text, tmp_path, monkeypatch):
    monkeypatch.setenv("MINIGPT_DATA_DIR", str(tmp_path / "cache"))  # a peak of its own: one
    # kept by another test (a fake one, say) could round its MFU to 0
    fp32, rows32 = short_run(small_text, tmp_path, "fp32", dtype="float32")
    bf16, rows16 = short_run(small_text, tmp_path, "bf16", dtype="bfloat16")
    losses32 = [r["train_loss"] for r in rows32]
    losses16 = [r["train_loss"] for r in rows16]
    assert losses16[-1] < losses16[0] - 0.5  # it learns
    assert max(abs(a - b) for a, b in zip(losses32, losses16, strict=True)) < 0.05
    assert abs(fp32["final_val_loss"] - bf16["final_val_loss"]) < 0.05
    for summary, rows in [(fp32, rows32), (bf16, rows16)]:
        assert all(0 < r["mfu"] < 1 for r in rows[1:])  # rows after the first time real steps
        assert 0 < summary["mfu"] < 1


def test_a_runs_mfu_is_its_tokens_per_second_times_the_counted_flops_over_the_peak(
        small_text, tmp_path, monkeypatch):
    """Each row's MFU and the summary's against FLOPs counted by PyTorch (FlopCounterMode on
    one forward and backward of the run's model, over a block) and a peak fixed at 1 GFLOP/s:
    0 < MFU < 1 (the test above) passed a trainer that counted 6 per parameter, the embeddings
    too, or the forward's FLOPs alone."""
    import minigpt.trainer

    monkeypatch.setattr(minigpt.trainer, "highest_peak", lambda device, dtype, cache: 1e9)
    cfg = tiny_config(small_text, steps=6, log_every=2, eval_every=3)
    summary = train(cfg, tmp_path / "r", progress=False).summary
    model = load_model(tmp_path / "r", "last")[0]  # (its vocabulary is the text's)
    T = model.config.block_size
    idx = torch.randint(0, model.config.vocab_size, (1, T))
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        model(idx, idx)[1].backward()
    per_token = counter.get_total_flops() / T
    for r in [*read_jsonl(tmp_path / "r" / "metrics.jsonl")[1:], summary]:
        assert r["mfu"] == pytest.approx(r["tokens_per_s"] * per_token / 1e9, rel=1e-3)


def test_mfu_over_100_percent_is_said_to_come_from_the_peak_measured(small_text, tmp_path,
                                                                     monkeypatch, caplog):
    """A peak measured while something else ran on the cores: the run then beats it."""
    import minigpt.trainer
    monkeypatch.setattr(minigpt.trainer, "highest_peak", lambda device, dtype, cache: 1e3)
    summary = train(tiny_config(small_text, steps=3), tmp_path / "r", progress=False).summary
    assert summary["mfu"] > 1
    assert "MFU above 100%: the matmul peak (on a CPU, the highest this machine has shown) was" \
        " below" in caplog.text


@pytest.mark.slow  # torch.compile's first compile
def test_compiled_training_matches_eager(small_text, tmp_path):
    # In float32: under bf16 (what --dtype auto picks on a CPU with AMX) the compiled kernels
    # round differently from the eager ones, by more than the 1e-3 this holds them to.
    eager, rows_e = short_run(small_text, tmp_path, "eager", compile="off", dtype="float32")
    comp, rows_c = short_run(small_text, tmp_path, "compiled", compile="on", dtype="float32")
    for a, b in zip(rows_e, rows_c, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-3)
    assert comp["final_val_loss"] == pytest.approx(eager["final_val_loss"], abs=1e-3)
    config = (tmp_path / "compiled" / "config.json").read_text()
    assert '"compile": true' in config


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_defaults_track_float32_eager(small_text, tmp_path):
    """On CUDA, 'auto' means bf16 autocast + torch.compile + TF32: the same losses as float32
    eager, within bf16's precision. (Written for a session with a GPU; skipped without one.)"""
    fast, rows_fast = short_run(small_text, tmp_path, "auto", device="cuda")
    ref, rows_ref = short_run(small_text, tmp_path, "fp32", device="cuda", dtype="float32",
                              compile="off")
    env = json.loads((tmp_path / "auto" / "config.json").read_text())["environment"]
    assert env["dtype"] == "bfloat16" and env["compile"] is True
    for a, b in zip(rows_fast, rows_ref, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=0.05)
    assert fast["final_val_loss"] == pytest.approx(ref["final_val_loss"], abs=0.05)


SPEEDRUN_OPTIONS = dict(pos="rope", norm="rmsnorm", qk_norm=True, mlp="swiglu", bias=False,
                        bigram=True, smear=True, value_embeds=1, unet=True, logit_cap=15.0,
                        n_layer=2, optimizer="muon", muon_variant="polar-express", normuon=True,
                        ema=0.9)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("options", [{}, SPEEDRUN_OPTIONS], ids=["lesson", "speedrun-options"])
def test_cuda_trains_as_the_cpu_does(small_text, tmp_path, options):
    """The CUDA path against the CPU as the oracle, both float32 eager from one seed (the batches
    come from CPU generators, so they are the same): every row's loss agrees within TF32's
    rounding, with the model options and Muon too."""
    same = dict(dtype="float32", compile="off", **options)
    cpu, rows_cpu = short_run(small_text, tmp_path, "cpu", device="cpu", **same)
    gpu, rows_gpu = short_run(small_text, tmp_path, "cuda", device="cuda", **same)
    assert [r["step"] for r in rows_cpu] == [r["step"] for r in rows_gpu]
    for a, b in zip(rows_cpu, rows_gpu, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=0.02)
    assert gpu["final_val_loss"] == pytest.approx(cpu["final_val_loss"], abs=0.02)
    assert rows_gpu[-1]["train_loss"] < rows_gpu[0]["train_loss"] - 0.3  # and it learns


def test_waiting_for_a_gpu_synchronizes_that_gpu_and_for_a_cpu_nothing(monkeypatch):
    """A GPU runs behind the Python that queues its work: waiting for cuda:1 synchronizes
    cuda:1 (not GPU 0, not every GPU); a CPU has computed by the time the call returns."""
    synced = []
    monkeypatch.setattr(torch.cuda, "synchronize", synced.append)
    performance.wait_for(torch.device("cuda", 1))
    performance.wait_for(torch.device("cpu"))
    assert synced == [torch.device("cuda", 1)]


def test_a_model_is_refused_where_its_weights_gradients_and_adamws_moments_cannot_fit(
        monkeypatch):
    """float32 AdamW holds 16 bytes a parameter: the weight, its gradient and two moments, 4
    bytes each. A machine with a byte fewer than that refuses the model; one with exactly that
    lets it be made (the weights counted too, not only what training adds to them). The
    refusal says the model and both sizes in GiB (wide enough for the GiB to show: the count
    needs no model built)."""
    cfg = resolve_config(overrides=dict(optimizer="adamw", n_layer=2, n_embd=4096, n_head=2))
    params = count_params(cfg.model)
    need = 4 * (1 + 1 + 2) * params
    def available(n):
        monkeypatch.setattr(performance, "memory_at", lambda device: (0, n, "available", 1))

    available(need - 1)
    said = (f"a model of {params:,} parameters (2 layers, 4096 wide) needs about "
            f"{need / 2**30:,.1f} GiB for its weights, gradients and optimizer state, and "
            f"{(need - 1) / 2**30:.1f} GiB is available: lower --n-layer or --n-embd")
    assert need / 2**30 > 1  # (the sizes show)
    with pytest.raises(MiniGPTError, match=f"^{re.escape(said)}$"):
        performance.check_model_fits(cfg, CPU)
    available(need)
    performance.check_model_fits(cfg, CPU)  # (no error)


def test_waiting_for_an_apple_gpu_synchronizes_it(monkeypatch):
    """MPS, as CUDA, queues its work behind the Python: without the wait a timed burst on a Mac
    measures the queueing, not the products (a peak far above the chip's)."""
    synced = []
    monkeypatch.setattr(torch.mps, "synchronize", lambda: synced.append("mps"))
    performance.wait_for(torch.device("mps"))
    assert synced == ["mps"]
