"""Sampling: top-k and top-p never emit excluded tokens, temperature 0 is greedy, bad parameters
are refused. (Seeding and contexts past the block: test_kvcache and test_lesson.)"""

import pytest
import torch

from minigpt import MiniGPT, MiniGPTError, filter_logits, generate
from minigpt.sample import PROMPT, default_prompt, sample_next, sample_text
from minigpt.tokenizer import BPETokenizer, CharTokenizer


@pytest.mark.parametrize("top_k", [1, 3, 10])
def test_top_k_never_emits_excluded_tokens(top_k):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 50, generator=g)
    allowed = torch.topk(logits, top_k, dim=-1).indices
    for _ in range(200):
        tok = sample_next(logits, top_k=top_k, generator=g)
        assert (tok == allowed).any(dim=-1).all()


def test_top_k_keeps_exactly_the_k_largest_for_every_k():
    logits = torch.randn(3, 30, generator=torch.Generator().manual_seed(0))
    for k in range(1, 31):
        kept = torch.isfinite(filter_logits(logits, top_k=k))
        assert (kept.sum(-1) == k).all()  # (k = V - 1 too: one token goes)
        assert torch.equal(kept.nonzero()[:, 1].view(3, k).sort().values,
                           torch.topk(logits, k).indices.sort().values)


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_temperature_divides_the_logits(temperature):
    """The draw is torch.multinomial's over softmax(logits / T), on the same generator."""
    logits = torch.randn(256, 30, generator=torch.Generator().manual_seed(0)) * 3
    drawn = sample_next(logits, temperature, generator=torch.Generator().manual_seed(1))
    oracle = torch.multinomial(torch.softmax(logits / temperature, -1), 1,
                               generator=torch.Generator().manual_seed(1))
    assert (drawn == oracle).float().mean() > 0.99  # (a draw on a rounding boundary may differ)
    flat = sample_next(logits, 1.0, generator=torch.Generator().manual_seed(1))
    assert (flat != drawn).sum() > 20  # another temperature, other tokens


def nucleus(probs: torch.Tensor, top_p: float) -> set[int]:
    """The oracle: walk one row's tokens from most to least likely until they sum to top_p."""
    total, kept = 0.0, set()
    for i in torch.argsort(probs, descending=True).tolist():
        kept.add(i)
        total += probs[i].item()
        if total >= top_p:
            break
    return kept


@pytest.mark.parametrize("top_p", [0.05, 0.5, 0.9])
def test_top_p_keeps_the_smallest_nucleus(top_p):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 40, generator=g) * 2
    kept = torch.isfinite(filter_logits(logits, top_p=top_p))
    probs = torch.softmax(logits, dim=-1)
    for row in range(3):
        assert set(torch.nonzero(kept[row]).flatten().tolist()) == nucleus(probs[row], top_p)
    for _ in range(200):
        tok = sample_next(logits, top_p=top_p, generator=g)
        assert kept.gather(1, tok).all()


@pytest.mark.parametrize("top_k", [4, 10])
@pytest.mark.parametrize("top_p", [0.5, 0.8])
def test_top_p_after_top_k_is_the_nucleus_of_the_top_k(top_k, top_p):
    """Both given: the nucleus is walked over the top k's own distribution (softmax over those
    k logits alone), as transformers' top-k then top-p warpers do, not over the whole
    vocabulary's probabilities and then cut to the top k (a larger set)."""
    logits = torch.randn(8, 40, generator=torch.Generator().manual_seed(2)) * 2
    kept = torch.isfinite(filter_logits(logits, top_k=top_k, top_p=top_p))
    top = torch.topk(logits, top_k)  # oracle: the top k, then their nucleus
    for row in range(8):
        within = nucleus(torch.softmax(top.values[row], -1), top_p)
        assert set(torch.nonzero(kept[row]).flatten().tolist()) == {
            top.indices[row, i].item() for i in within}


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_top_p_is_the_nucleus_of_the_tempered_distribution(temperature):
    """The nucleus is taken over softmax(logits / T), the distribution the token is drawn from
    (a low temperature narrows it, a high one widens it): the draw is torch.multinomial's over
    that nucleus, on the same generator."""
    logits = torch.randn(256, 12, generator=torch.Generator().manual_seed(0)) * 2
    tempered = (logits - logits.max(-1, keepdim=True).values) / temperature  # (as sample_next)
    probs = torch.softmax(tempered, -1)
    inside = torch.zeros_like(logits, dtype=torch.bool)
    for row in range(len(logits)):
        inside[row, list(nucleus(probs[row], 0.7))] = True
    oracle = torch.multinomial(torch.softmax(tempered.masked_fill(~inside, float("-inf")), -1),
                               1, generator=torch.Generator().manual_seed(1))
    drawn = sample_next(logits, temperature, top_p=0.7,
                        generator=torch.Generator().manual_seed(1))
    assert torch.equal(drawn, oracle)


@pytest.mark.parametrize("top_p, n_kept", [(0.25, 1), (0.5, 2), (0.75, 3), (1.0, 4)])
def test_top_p_keeps_the_token_that_reaches_it_and_no_more(top_p, n_kept):
    """Four equally likely tokens, 0.25 each (exact in float32): the nucleus of n / 4 is n
    tokens, the one that brings the sum to top_p exactly in and the next one out; top_p = 1,
    the upper end of (0, 1], is accepted and keeps every token."""
    kept = torch.isfinite(filter_logits(torch.zeros(2, 4), top_p=top_p))
    assert kept.sum(-1).tolist() == [n_kept, n_kept]


def test_temperature_zero_is_greedy():
    logits = torch.randn(5, 20)
    assert torch.equal(sample_next(logits, temperature=0), logits.argmax(-1, keepdim=True))


def test_temperature_zero_takes_the_first_of_tied_logits_and_draws_nothing():
    """Temperature 0 is argmax, not a very low temperature: of tied logits the first, every
    time (a draw would split them), and the generator is left as it was."""
    logits = torch.tensor([[5.0, 5.0, 0.0], [0.0, 2.0, 2.0]]).repeat(200, 1)
    g = torch.Generator().manual_seed(0)
    before = g.get_state()
    drawn = sample_next(logits, 0, top_k=2, top_p=0.9, generator=g)
    assert torch.equal(drawn, logits.argmax(-1, keepdim=True))  # (argmax: the first maximum)
    assert torch.equal(g.get_state(), before)


def test_a_temperature_too_small_for_float32_is_greedy():
    """1e-50 rounds to 0 in float32 (logits / 0: NaN): the temperature is held at 1e-6."""
    logits = torch.randn(5, 20, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sample_next(logits, temperature=1e-50), logits.argmax(-1, keepdim=True))


def test_a_low_temperature_does_not_overflow_half_precision_logits():
    """90 / 1e-3 is past float16's largest value (65504): the largest logit is shifted to 0
    before dividing, so the draw is the greedy one rather than a softmax of inf (NaN)."""
    logits = torch.tensor([[3.0, 90.0, 89.0, -40.0], [-5.0, 0.0, 1.0, 0.5]]).half()
    drawn = sample_next(logits, 1e-3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(drawn, logits.argmax(-1, keepdim=True))


@pytest.mark.parametrize("kw, said", [(dict(temperature=-1), "temperature must be >= 0"),
                                      (dict(temperature=float("inf")), "and finite"),
                                      (dict(top_k=0), "top_k must be a whole number >= 1"),
                                      (dict(top_k=True), "top_k must be a whole number"),
                                      (dict(top_p=0.0), r"top_p must be in \(0, 1\], got 0.0"),
                                      (dict(top_p=1.5), r"top_p must be in \(0, 1\], got 1.5")])
def test_bad_sampling_parameters(kw, said):
    model = MiniGPT(10, n_embd=16, n_layer=1, n_head=2, block_size=8)
    with pytest.raises(MiniGPTError, match=said):
        generate(model, torch.zeros(1, 1, dtype=torch.long), 3, **kw)


@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_weights_that_are_not_finite_are_one_line(temperature):
    model = MiniGPT(10, n_embd=16, n_layer=1, n_head=2, block_size=8)
    with torch.no_grad():
        model.lm_head.weight[3, 0] = float("nan")  # token 3's logit: greedy picked it
    with pytest.raises(MiniGPTError, match="outputs are not finite .* an earlier checkpoint"):
        generate(model, torch.zeros(1, 1, dtype=torch.long), 3, temperature=temperature)


def test_finite_weights_too_large_are_not_said_to_be_nan():
    """A run that blew up under --skip-nonfinite keeps finite weights of 1e7 and more whose
    outputs overflow: the error said 'its weights are' (not finite), which they were not."""
    model = MiniGPT(10, n_embd=16, n_layer=1, n_head=2, block_size=8)
    with torch.no_grad():
        model.ln_f.bias.fill_(1.0)  # (the final norm's outputs sum to 16, not to about 0)
        model.lm_head.weight.fill_(1e38)  # finite; its logits, sums of 16 such terms, are not
    assert all(torch.isfinite(p).all() for p in model.parameters())
    with pytest.raises(MiniGPTError, match=r"not finite \(NaN or inf\): its weights are finite, "
                                           r"but so large \(up to 1e\+38\) that they overflow"):
        generate(model, torch.zeros(1, 1, dtype=torch.long), 3)


def test_ids_of_another_vocabulary_are_refused_in_one_line():
    """A tokenizer of another run: ids past the model's vocabulary, or past the tokenizer's."""
    model = MiniGPT(10, n_embd=16, n_layer=1, n_head=2, block_size=8)
    for ids in ([[3, 10]], [[-1, 2]]):
        with pytest.raises(MiniGPTError, match=r"outside the model's vocabulary \(0 to 9\)"):
            generate(model, torch.tensor(ids), 3)
    for tok in (CharTokenizer("abc"), BPETokenizer.train(["some text to learn from"], 260)):
        assert tok.decode([1, 0]) == tok.decode([1]) + tok.decode([0])
        for bad in (tok.vocab_size, -1):
            with pytest.raises(MiniGPTError, match=f"id {bad} is outside this tokenizer's"):
                tok.decode([0, bad])


def test_top_p_of_one_keeps_every_token_even_one_float32_rounds_away():
    """softmax([0, -20]) is [1.0, 2e-9] in float32: the tokens before the second already sum
    to 1 after rounding, yet top_p = 1 (no nucleus) must keep it, as the unfiltered logits."""
    logits = torch.tensor([[0.0, -20.0, -25.0], [1.0, 0.0, -30.0]])
    assert torch.equal(filter_logits(logits, top_p=1.0), logits)


def test_a_top_p_that_rounds_to_zero_still_keeps_the_most_likely_token():
    """1e-50 is 0 in float32, where the probabilities are compared with it: the most likely
    token stays (never an empty nucleus, whose softmax is NaN)."""
    logits = torch.randn(4, 12, generator=torch.Generator().manual_seed(0))
    kept = torch.isfinite(filter_logits(logits, top_p=1e-50))
    assert torch.equal(kept, torch.nn.functional.one_hot(logits.argmax(-1), 12).bool())
    tok = sample_next(logits, top_p=1e-50, generator=torch.Generator().manual_seed(0))
    assert torch.equal(tok, logits.argmax(-1, keepdim=True))


def test_a_small_positive_temperature_still_samples_between_tied_tokens():
    """Only temperature 0 is argmax: at 1e-4, two tied logits are each drawn about half the
    time (argmax would always give the first)."""
    logits = torch.tensor([[5.0, 5.0, 0.0]]).repeat(400, 1)
    drawn = sample_next(logits, 1e-4, generator=torch.Generator().manual_seed(0)).flatten()
    assert set(drawn.tolist()) == {0, 1}
    assert 120 < (drawn == 1).sum() < 280


def test_the_default_prompt_is_romeo_or_else_the_text_of_token_zero():
    assert default_prompt(CharTokenizer.from_text("ROMEO: and JULIET")) == PROMPT
    assert default_prompt(CharTokenizer.from_text("xyz abc")) == " "  # token 0: the first sorted


def test_sample_text_is_the_prompt_continued_with_the_draws_of_its_seed():
    """sample_text's seed is the generator's: its text is generate's from that seed, decoded,
    and another seed draws other text (an unseeded generator drew the same text for every
    seed, which a test of one seed twice could not tell)."""
    tok = CharTokenizer.from_text("ROMEO: what light through yonder window breaks")
    model = MiniGPT(tok.vocab_size, n_embd=16, n_layer=1, n_head=2, block_size=8)
    idx = torch.tensor([tok.encode("ROMEO:")])
    texts = {}
    for seed in (1, 2):
        oracle = generate(model, idx, 30, generator=torch.Generator().manual_seed(seed))
        texts[seed] = sample_text(model, tok, None, 30, seed=seed)
        assert texts[seed] == tok.decode(oracle[0].tolist())
        assert texts[seed].startswith("ROMEO:") and len(texts[seed]) == 36
    assert texts[1] != texts[2]
