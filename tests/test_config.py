"""Configuration: presets, TOML files and flags in that order; unknown keys suggest a fix."""

import math
import re

import pytest
import torch

from conftest import tiny_config
from minigpt import MiniGPTError, RunConfig, resolve_config, train
from minigpt.config import MAX_GRAD_ACCUM, field_index, fit_to_budget, preset_names, preset_table


def test_presets_exist_and_load_and_seed_is_the_default_config():
    assert resolve_config("seed") == RunConfig()
    assert {"seed", "seed-reference", "nanogpt-char", "fast", "pretrain"} <= set(preset_names())
    ref = resolve_config("seed-reference").train
    assert (ref.lr, ref.schedule, ref.grad_clip, ref.steps) == (3e-4, "constant", 0.0, 5000)
    lessons = torch.optim.AdamW([torch.zeros(1)], lr=3e-4).defaults  # the lesson's optimizer
    assert ((ref.beta1, ref.beta2), ref.weight_decay) == (lessons["betas"], lessons["weight_decay"])
    assert ref.dtype == "float32"  # the lesson's script computes in float32 (no autocast)
    nano = resolve_config("nanogpt-char")
    assert (nano.model.n_layer, nano.model.n_head, nano.model.n_embd) == (6, 6, 384)
    assert (nano.model.block_size, nano.train.batch_size, nano.model.dropout) == (256, 64, 0.2)
    # nanoGPT's config/train_shakespeare_char.py: learning_rate, min_lr, max_iters, warmup_iters
    assert (nano.train.lr, nano.train.min_lr, nano.train.steps, nano.train.warmup_steps) == (
        1e-3, 1e-4, 5000, 100)


def test_the_pretrain_preset_is_sized_for_a_billion_tokens():
    from minigpt.model import count_params

    cfg = resolve_config("pretrain", overrides={"vocab_size": 8192})  # its corpus's tokenizer
    t = cfg.train
    tokens = t.steps * t.batch_size * t.grad_accum * cfg.model.block_size
    assert 1e9 <= tokens < 1.001e9
    assert 15 < tokens / count_params(cfg.model) < 25  # near 20 tokens a parameter
    assert (cfg.model.pos, t.optimizer, t.dtype) == ("rope", "muon", "auto")
    assert t.eval_batches > 0  # never the whole validation split at every evaluation


def test_flags_beat_file_beat_preset(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[train]\nlr = 0.01\nsteps = 7\n[model]\nn_layer = 2\n")
    cfg = resolve_config("seed-reference", str(f), {"steps": 9})
    assert cfg.train.steps == 9  # flag
    assert cfg.train.lr == 0.01  # file
    assert cfg.model.n_layer == 2  # file
    assert cfg.train.schedule == "constant"  # preset
    assert cfg.train.eval_every == RunConfig().train.eval_every  # default
    f.write_bytes(b"\xef\xbb\xbf[model]\nn_layer = 3\n")  # a UTF-8 byte-order mark (Notepad's)
    assert resolve_config("seed", str(f)).model.n_layer == 3  # is no syntax error at line 1


def test_the_fast_preset_fits_its_recipe_to_a_short_budget(tmp_path):
    def value(cfg, key):
        return getattr(cfg.sections()[field_index()[key][0]], key)

    fits = sorted(preset_table("fast")["fit"], key=lambda f: f["below"])
    plain = resolve_config("fast", overrides={"time_budget": 1000.0})  # above every fit
    for fit in fits:
        keys = set(fit) - {"below"}
        cfg = resolve_config("fast", overrides={"time_budget": fit["below"] - 1})
        assert {key: value(cfg, key) for key in keys} == {key: fit[key] for key in keys}
        assert any(value(plain, key) != fit[key] for key in keys)  # it did change something
    f = tmp_path / "budget.toml"  # a budget as a file's text ("30s") fits as its seconds do
    f.write_text(f'[train]\ntime_budget = "{fits[-1]["below"] - 1:g}s"\n')
    assert resolve_config("fast", str(f)) == cfg  # the last fit's
    assert resolve_config("fast", overrides={"time_budget": "1000s"}) == plain
    unbudgeted = resolve_config("fast", overrides={"time_budget": 0})  # steps: no fit applies
    unbudgeted.train.time_budget = plain.train.time_budget
    assert unbudgeted == plain
    f = tmp_path / "c.toml"  # a config file and a flag still win over the fit
    f.write_text("[train]\nwarmup_steps = 7\n")
    cfg = resolve_config("fast", str(f), {"time_budget": fits[0]["below"] - 1, "batch_size": 5})
    assert (cfg.train.batch_size, cfg.train.warmup_steps) == (5, 7)


def test_the_tightest_fit_wins_in_whatever_order_the_tables_come():
    fits = [{"below": 60.0, "lr": 0.1}, {"below": 30.0, "lr": 0.2}, {"below": 90.0, "lr": 0.3}]
    assert fit_to_budget(fits, 20.0, "preset x") == {"lr": 0.2}
    assert fit_to_budget(fits, 45.0, "preset x") == {"lr": 0.1}
    assert fit_to_budget(fits, 90.0, "preset x") == {} == fit_to_budget(fits, 0.0, "preset x")


def test_a_fit_table_without_its_bound_is_a_one_line_error():
    with pytest.raises(MiniGPTError, match=r"^preset x: every \[\[fit\]\] table needs below = "
                                           r"SECONDS$"):
        fit_to_budget([{"below": 60.0, "lr": 0.1}, {"lr": 0.2}], 20.0, "preset x")


@pytest.mark.parametrize("toml, message", [
    ("[train]\nlearning_rate = 1.0\n", "unknown key 'learning_rate' in [train]"),
    ("[train]\nbatchsize = 4\n", "did you mean 'batch_size'"),
    ("[modle]\nn_layer = 1\n", "did you mean 'model'"),
    ("[train]\nn_layer = 2\n", "c.toml: 'n_layer' belongs in [model], not [train]"),
    ("steps = 2\n", "c.toml: 'steps' belongs in the [train] section"),  # above every section
    ("[train]\nsteps = 'many'\n", "c.toml: 'steps' must be int"),  # the file named
    ("[train]\nsteps = true\n", "c.toml: 'steps' must be int, got True"),  # not 1 step
    ("[train]\noptimizer = 'adam'\n", "c.toml: 'optimizer' must be one of adamw, sgd"),
    ("[train]\ncompile = true\n", "c.toml: 'compile' must be one of auto, on, off; got True"),
    ("[train]\nsteps = -3\n", "/c.toml: 'steps' must be positive, got -3$"),  # a range too
    ("[model]\ndropout = 1.5\n", "/c.toml: 'dropout' must be in"),
    ("[train\n", "cannot read config"),
    ('preset = "fast"\n', "c.toml: a config file does not choose a preset: give --preset fast"),
    ("[train.optim]\nlr = 0.1\n", "c.toml: [train.optim]: sections do not nest; put its "
                                   "settings in [train] itself"),  # not "did you mean optimizer"
    ("train = 3\n", "c.toml: [train] must be a table of settings"),  # a section's name, a value
    ("[train]\nwarmup_steps = -1\n", "c.toml: 'warmup_steps' must not be negative, got -1$"),
])
def test_bad_files_are_one_line_errors(tmp_path, toml, message):
    f = tmp_path / "c.toml"
    f.write_text(toml)
    with pytest.raises(MiniGPTError, match=message.replace("[", r"\[").replace("]", r"\]")):
        resolve_config("seed", str(f))


def test_a_files_value_a_flag_replaces_is_not_checked(tmp_path):
    """(checked on its own only to name the file in an error: one the flag replaces makes none)"""
    f = tmp_path / "c.toml"
    f.write_text("[train]\nsteps = -3\n")
    assert resolve_config("seed", str(f), {"steps": 5}).train.steps == 5


@pytest.mark.parametrize("overrides, message", [
    # (n_embd 30 for 4 heads, steps, batch_size, lr, block_size, a misspelt preset: test_cli's
    # BAD_INPUT)
    ({"n_emb": 8}, "did you mean 'n_embd'"),
    ({"nope": 8}, r"^unknown setting 'nope' \(if it is a setting beyond"),  # no 'compile'?
    ({"dropout": 1.0}, "dropout"),
    ({"lr": 1e-4, "min_lr": 1e-3}, "min_lr"),
    ({"val_fraction": 1.0}, r"^'val_fraction' must be in \(0, 1\), got 1.0$"),
    ({"pos": "rope", "n_embd": 12, "n_head": 4}, "^rope needs an even head size, got 3$"),
])
def test_unknown_settings_and_settings_that_cannot_train(overrides, message):
    with pytest.raises(MiniGPTError, match=message):
        resolve_config("seed", None, overrides)


N_LAYER = RunConfig().model.n_layer


@pytest.mark.parametrize("key, last_good, first_bad", [
    ("steps", 2**63 - 1, 2**63),  # (a step counter's 64 bits)
    ("seed", 2**63 - 1, 2**63),
    ("seed", -2**63, -2**63 - 1),
    ("grad_accum", MAX_GRAD_ACCUM, MAX_GRAD_ACCUM + 1),
    ("ramp", 1.0, 1.0 + 1e-9),  # the whole of training is a part of it
    ("ramp", 0.0, -1e-9),  # no ramp: no size schedule
    ("beta1", math.nextafter(1.0, 0.0), 1.0),  # torch's AdamW refuses a beta of 1
    ("keep", 1, 0),  # a checkpoint to resume from
    ("block_start", 0, -1),  # off at 0
    ("value_embeds", N_LAYER, N_LAYER + 1),  # every block's values
    ("val_fraction", 1e-9, 0.0),  # nothing held out: no validation loss
    ("targets", "1.72,1e-9", "1.72,0"),  # a loss of 0 is never reached
])
def test_each_bound_takes_its_last_value_and_refuses_the_next(key, last_good, first_bad):
    cfg = resolve_config(overrides={key: last_good})
    assert getattr(cfg.sections()[field_index()[key][0]], key) == last_good
    with pytest.raises(MiniGPTError, match=f"'{key}'"):
        resolve_config(overrides={key: first_bad})


def test_a_time_budget_is_a_duration_in_flags_and_files(tmp_path):
    assert resolve_config(overrides={"time_budget": "8h"}).train.time_budget == 8 * 3600
    assert resolve_config(overrides={"time_budget": "1.5m"}).train.time_budget == 90
    assert resolve_config(overrides={"time_budget": "1h 30m"}).train.time_budget == 5400
    assert resolve_config(overrides={"time_budget": "1d"}).train.time_budget == 86400  # a day
    assert resolve_config(overrides={"time_budget": "90s"}).train.time_budget == 90
    for text in ("1h30", "h", "30m1", "1h-30m", "1e400"):  # (1e400 s: inf)
        with pytest.raises(MiniGPTError, match=f"a duration such as 90, 30m, 8h or 1h30m, "
                                               f"got '{text}'"):
            resolve_config(overrides={"time_budget": text})
    assert resolve_config(overrides={"time_budget": 42}).train.time_budget == 42.0
    toml = tmp_path / "run.toml"
    toml.write_text('[train]\ntime_budget = "30m"\n')
    assert resolve_config(config_file=str(toml)).train.time_budget == 1800
    with pytest.raises(MiniGPTError, match="'time_budget' must be a duration such as 90"):
        resolve_config(overrides={"time_budget": "soon"})


@pytest.mark.parametrize("key, value, message", [
    ("optimizer", "adam", "'optimizer' must be one of adamw, sgd, muon; got 'adam'"),
    ("steps", 0, "'steps' must be positive"),
    ("time_budget", "5x", "'time_budget' must be a duration such as 90, 30m, 8h or 1h30m"),
    ("lr", "0.1", "'lr' must be float, got '0.1'"),
])
def test_train_checks_a_config_changed_in_code(small_text, tmp_path, key, value, message):
    """As a notebook might: resolve_config, then a setting changed by hand, then train."""
    cfg = tiny_config(small_text)
    setattr(cfg.train, key, value)
    with pytest.raises(MiniGPTError, match=re.escape(message)):
        train(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()  # refused before anything is written
