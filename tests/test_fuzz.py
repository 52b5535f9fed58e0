"""Property tests: whatever a user writes in a config or passes to the sampler, the answer is a
valid result or a MiniGPTError, never another exception."""

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minigpt import MiniGPT, MiniGPTError, RunConfig, generate
from minigpt.config import SECTIONS, apply_overrides, field_index, validate

KEYS = sorted(field_index()) + ["lerning_rate", "n_layers", "", "steps "]
VALUES = st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=True), st.text(max_size=8),
                   st.booleans(), st.lists(st.integers(), max_size=2), st.none())


@given(st.dictionaries(st.sampled_from([*SECTIONS, "modle", "extra"]),
                       st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=4), max_size=3))
@settings(max_examples=300, deadline=None)
def test_config_tables_either_apply_or_fail_clearly(table):
    cfg = RunConfig()
    try:
        apply_overrides(cfg, table, "fuzz")
        validate(cfg)
    except MiniGPTError as e:
        assert "\n" not in str(e) and str(e)
        return
    for section, values in table.items():  # what was accepted is what is set
        for key, value in values.items():
            got = getattr(getattr(cfg, section), key)
            assert got == value or (isinstance(value, float) and math.isnan(value))


MODEL = MiniGPT(12, n_embd=16, n_head=2, n_layer=1, block_size=8)


@given(temperature=st.floats(allow_nan=True, allow_infinity=True),
       top_k=st.none() | st.integers(-3, 40),
       top_p=st.none() | st.floats(allow_nan=True, allow_infinity=True),
       n=st.integers(0, 12), seed=st.integers(0, 2**31))
@settings(max_examples=200, deadline=None)
def test_sampler_parameters_either_sample_or_fail_clearly(temperature, top_k, top_p, n, seed):
    idx = torch.zeros(2, 1, dtype=torch.long)
    try:
        out = generate(MODEL, idx, n, temperature=temperature, top_k=top_k, top_p=top_p,
                       generator=torch.Generator().manual_seed(seed))
    except MiniGPTError as e:
        assert "\n" not in str(e)
        return
    assert out.shape == (2, 1 + n)
    assert int(out.min()) >= 0 and int(out.max()) < 12
