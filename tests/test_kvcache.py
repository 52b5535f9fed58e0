"""Sampling with a KV cache: the same tokens as the uncached sampler (the oracle) for the same
seed, inside the block and past it; the same logits at every step; the training forward as
before; and the cache's errors."""

import copy
import math
from unittest import mock

import pytest
import torch
import torch.nn.functional as F

import minigpt.sample
from conftest import lesson_attention
from minigpt import MiniGPT, MiniGPTError, generate, lesson, stream
from minigpt.sample import KVCache

V, BLOCK = 20, 16


@pytest.fixture(scope="module")
def model():
    """A tiny model with its random weights scaled up, so that its next-token distributions are
    far from uniform and its attention far from flat (as a trained model's are)."""
    torch.manual_seed(0)
    m = MiniGPT(V, n_embd=32, n_head=4, n_layer=2, block_size=BLOCK).eval()
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 2:
                p.mul_(10)
        probs = m(torch.randint(0, V, (8, BLOCK)))[0].softmax(-1)
    entropy = -(probs * probs.log()).sum(-1).mean().item()
    assert entropy < 0.85 * math.log(V)  # not near-uniform: the sampling choices matter
    return m


def run(model, prompt, n, seed, cache, **kw):
    return generate(model, prompt, n, generator=torch.Generator().manual_seed(seed),
                    cache=cache, **kw)


SAMPLING = [dict(), dict(temperature=0.7), dict(temperature=1.5, top_k=5),
            dict(top_p=0.9), dict(temperature=0.8, top_k=8, top_p=0.7), dict(temperature=0)]


pytestmark = pytest.mark.usefixtures("one_thread")  # (test_default_thread_count: the default)


@pytest.mark.parametrize("kw", SAMPLING, ids=lambda kw: ",".join(f"{k}={v}" for k, v in
                                                               kw.items()) or "plain")
@pytest.mark.parametrize("batch,prompt_len", [(1, 1), (3, 5), (1, BLOCK), (3, BLOCK + 4)])
def test_cached_sampler_draws_the_uncached_samplers_tokens(model, kw, batch, prompt_len):
    prompt = torch.randint(0, V, (batch, prompt_len), generator=torch.Generator().manual_seed(9))
    n = 3 * BLOCK  # past the block: the window slides for most of the run
    for seed in range(3):
        cached = run(model, prompt, n, seed, True, **kw)
        oracle = run(model, prompt, n, seed, False, **kw)
        assert cached.shape == (batch, prompt_len + n)
        assert torch.equal(cached, oracle), f"seed {seed}"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cached_sampler_on_cuda(model):
    """The same oracle on a GPU, where SDPA picks other kernels for the cached path's shapes.
    (Written for a session with a GPU; skipped without one.)"""
    gpu = copy.deepcopy(model).cuda()
    prompt = torch.randint(0, V, (3, 5), generator=torch.Generator().manual_seed(9)).cuda()
    for seed in range(3):
        out = {cache: generate(gpu, prompt, 3 * BLOCK, cache=cache, temperature=0.8,
                               generator=torch.Generator("cuda").manual_seed(seed))
               for cache in (True, False)}
        assert torch.equal(out[True], out[False]), f"seed {seed}"


def test_many_seeds_and_the_seed_matters(model):
    prompt = torch.tensor([[3, 1, 4], [1, 5, 9]])
    outs = []
    for seed in range(12):
        outs.append(run(model, prompt, 2 * BLOCK, seed, True, top_k=10))
        assert torch.equal(outs[-1], run(model, prompt, 2 * BLOCK, seed, False, top_k=10))
    assert len({tuple(o.flatten().tolist()) for o in outs}) == len(outs)


def test_default_thread_count(model, one_thread):
    torch.set_num_threads(one_thread)  # the count torch had before this module
    try:
        prompt = torch.tensor([[2, 7]])
        for seed in range(2):
            assert torch.equal(run(model, prompt, 2 * BLOCK, seed, True),
                               run(model, prompt, 2 * BLOCK, seed, False))
    finally:
        torch.set_num_threads(1)


def test_same_global_rng_draws_as_the_lessons_call(model):
    """Without a generator the cached sampler (and model.generate, which calls it) draws from
    the global RNG, as the lesson's generate does: the same tokens, past the block too."""
    prompt = torch.zeros(1, 3, dtype=torch.long)
    draws = []
    for sampler in (generate, MiniGPT.generate, lesson.generate):  # the last: the oracle
        torch.manual_seed(5)
        draws.append(sampler(model, prompt, 3 * BLOCK + 5))  # (the buffer slides at 2 blocks)
    model.eval()  # the lesson's generate leaves the model in training mode
    assert torch.equal(draws[0], draws[2]) and torch.equal(draws[1], draws[2])


def test_the_same_logits_and_random_draws_at_every_step(model, monkeypatch):
    """Record the logits each sampler hands to sample_next: equal at every step, in the block,
    at its edge and past it; and one multinomial per token, the generator left in the same
    state (both consumed exactly the same random numbers)."""
    counting = mock.Mock(wraps=torch.multinomial)  # torch.multinomial, its calls counted
    monkeypatch.setattr(torch, "multinomial", counting)
    seen, states = {True: [], False: []}, {}
    real = minigpt.sample.sample_next
    for cache in (True, False):
        def recording(logits, *a, _cache=cache, **kw):
            seen[_cache].append(logits.clone())
            return real(logits, *a, **kw)

        monkeypatch.setattr(minigpt.sample, "sample_next", recording)
        counting.reset_mock()
        g = torch.Generator().manual_seed(11)
        generate(model, torch.tensor([[1, 2, 3], [4, 5, 6]]), 2 * BLOCK, generator=g, cache=cache)
        assert counting.call_count == 2 * BLOCK
        states[cache] = g.get_state()
    assert torch.equal(states[True], states[False])
    assert len(seen[True]) == len(seen[False]) == 2 * BLOCK
    for step, (a, b) in enumerate(zip(seen[True], seen[False], strict=True)):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-5, msg=lambda m, s=step: f"{s}: {m}")


def test_the_cached_sampler_runs_each_new_token_alone_while_it_fits(model, monkeypatch):
    """The work the cache saves, by the forwards the sampler asks for: the prompt once, then
    each token alone with the cache up to the block's last position; past the block, the whole
    window uncached (as the lesson's sampler does at every token). A sampler that never used
    its cache drew the same tokens, and the tests above could not tell."""
    calls = []
    real = MiniGPT.forward

    def recording(self, idx, *a, cache=None, **kw):
        calls.append((idx.size(1), cache is not None))
        return real(self, idx, *a, cache=cache, **kw)

    monkeypatch.setattr(MiniGPT, "forward", recording)
    prompt = torch.tensor([[1, 2, 3], [4, 5, 6]])
    generate(model, prompt, 2 * BLOCK, generator=torch.Generator().manual_seed(0))
    fits = BLOCK - 3 + 1  # tokens 3 .. BLOCK, each sampled from a window that fits
    assert calls == [(3, True)] + [(1, True)] * (fits - 1) + [(BLOCK, False)] * (2 * BLOCK - fits)
    calls.clear()
    generate(model, prompt, 2 * BLOCK, generator=torch.Generator().manual_seed(0), cache=False)
    assert calls == [(min(n, BLOCK), False) for n in range(3, 3 + 2 * BLOCK)]


@pytest.mark.parametrize("batch", [1, 3])
def test_cached_forward_equals_the_uncached_one(model, batch):
    """model(idx, cache=kv): idx's logits after kv's positions. A prompt all at once (causal),
    then a chunk of queries after the cached keys, then one token at a time."""
    idx = torch.randint(0, V, (batch, BLOCK))
    with torch.no_grad():
        kv = KVCache(model, batch)
        torch.testing.assert_close(model(idx[:, :4], cache=kv)[0], model(idx[:, :4])[0])
        logits = model(idx[:, 4:11], cache=kv)[0]  # 7 queries after 4 cached keys
        torch.testing.assert_close(logits, model(idx[:, :11])[0][:, 4:], atol=1e-4, rtol=1e-5)
        for t in range(11, BLOCK):
            logits = model(idx[:, t:t + 1], cache=kv)[0][:, -1]
            torch.testing.assert_close(logits, model(idx[:, :t + 1])[0][:, -1],
                                       atol=1e-4, rtol=1e-5)
        assert kv.length == BLOCK


@pytest.mark.parametrize("batch", [1, 3])
def test_two_queries_after_the_cache_are_masked_causally(model, batch):
    """The shortest chunk after cached keys that needs the mask: its first query must not see
    its second token (one query alone sees every key, unmasked)."""
    idx = torch.randint(0, V, (batch, 8))
    with torch.no_grad():
        kv = KVCache(model, batch)
        model(idx[:, :5], cache=kv)
        torch.testing.assert_close(model(idx[:, 5:7], cache=kv)[0], model(idx[:, :7])[0][:, 5:],
                                   atol=1e-4, rtol=1e-5)


def fused_attention_before_the_cache(attn, x):
    """CausalSelfAttention.forward as it was before the cache: scaled_dot_product_attention."""
    B, T, C = x.shape
    q = attn.Wq(x).view(B, T, attn.n_head, attn.d_k).transpose(1, 2)  # (B, nh, T, hs)
    k = attn.Wk(x).view(B, T, attn.n_head, attn.d_k).transpose(1, 2)  # (B, nh, T, hs)
    v = attn.Wv(x).view(B, T, attn.n_head, attn.d_k).transpose(1, 2)  # (B, nh, T, hs)
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
    return attn.Wo(y.transpose(1, 2).contiguous().view(B, T, C))  # (B, T, C)


def reference_forward(model, idx, attention):
    """MiniGPT.forward written out with the given attention function."""
    T = idx.size(1)
    x = model.token_emb(idx) + model.pos_emb(torch.arange(T))  # (B, T, C)
    for block in model.blocks:
        x = x + attention(block.attn, block.ln1(x))
        x = x + block.ff(block.ln2(x))
    return model.lm_head(model.ln_f(x))  # (B, T, vocab)


def test_training_forward_is_unchanged():
    torch.manual_seed(1)
    model = MiniGPT(65, block_size=32).train()
    idx = torch.randint(0, 65, (4, 32))
    targets = torch.randint(0, 65, (4, 32))
    logits, loss = model(idx, targets)
    # bit for bit what the code before the cache computed, and the lesson's numbers
    assert torch.equal(logits, reference_forward(model, idx, fused_attention_before_the_cache))
    torch.testing.assert_close(logits, reference_forward(model, idx, lesson_attention),
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss, F.cross_entropy(logits.view(-1, 65), targets.view(-1)))
    loss.backward()  # gradients flow as before: the cache adds no parameters
    assert all(p.grad is not None for p in model.parameters())
    model = MiniGPT(65)  # and the cache adds no parameters, no buffers, no state
    assert model.num_params() == sum(p.numel() for p in lesson.MiniGPT(65).parameters())
    assert not list(model.buffers())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    generate(model, torch.zeros(1, 1, dtype=torch.long), 5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_mode_given_back_and_streaming(model):
    model.train()
    try:
        tokens = list(stream(model, torch.zeros(1, 2, dtype=torch.long), BLOCK + 3,
                             generator=torch.Generator().manual_seed(0)))
        assert model.training
    finally:
        model.eval()
    assert all(t.shape == (1, 1) for t in tokens)  # one at a time, past the window, and the
    uncached = generate(model, torch.zeros(1, 2, dtype=torch.long), BLOCK + 3,  # lesson's draws
                        generator=torch.Generator().manual_seed(0), cache=False)
    assert torch.equal(torch.cat(tokens, 1), uncached[:, 2:])
    assert generate(model, torch.zeros(1, 2, dtype=torch.long), 0).shape == (1, 2)


def test_streams_taking_turns_on_one_model_each_sample_in_eval_mode(model):
    """A stream set eval mode at its start and gave the mode back at its end: with two open
    on one model (a server's requests), the first to end put dropout back on for the other."""
    idx = torch.zeros(1, 2, dtype=torch.long)
    torch.manual_seed(0)
    dropped = MiniGPT(V, n_embd=32, n_head=4, n_layer=2, block_size=BLOCK, dropout=0.5)
    alone = generate(dropped, idx, 20, generator=torch.Generator().manual_seed(1))
    dropped.train()
    first, second = (stream(dropped, idx, 20, generator=torch.Generator().manual_seed(1))
                     for _ in range(2))
    second_tokens = [next(second)]
    first_tokens = list(first)  # ends while `second` is open
    assert dropped.training  # the caller's mode, between tokens too
    second_tokens += list(second)
    assert torch.equal(torch.cat([idx, *first_tokens], 1), alone)
    assert torch.equal(torch.cat([idx, *second_tokens], 1), alone)


def test_an_endless_stream_costs_one_window_of_memory(model):
    """The whole output was allocated at the first token: 10**12 tokens asked for failed
    there with a traceback of 8 TB; a stream only ever needs the last block_size tokens."""
    idx = torch.zeros(1, 2, dtype=torch.long)
    tokens = stream(model, idx, 10**12, generator=torch.Generator().manual_seed(0))
    first = [next(tokens) for _ in range(3)]
    assert torch.equal(torch.cat([idx, *first], 1), generate(  # the uncached sampler's
        model, idx, 3, generator=torch.Generator().manual_seed(0), cache=False))


def test_a_model_other_than_minigpt_is_sampled_uncached(model):
    class LessonStyle(torch.nn.Module):  # only forward(idx) -> (logits, loss)
        def __init__(self, inner):
            super().__init__()
            self.inner, self.block_size = inner, inner.block_size

        def forward(self, idx):
            return self.inner(idx)

    args = (torch.zeros(1, 1, dtype=torch.long), 30, 2, True)  # prompt, n, seed, cache
    assert torch.equal(run(LessonStyle(model), *args), run(model, *args))


def test_cache_errors(model):
    kv = KVCache(model, 2)
    with pytest.raises(MiniGPTError, match="do not fit in block_size 16"):
        model(torch.zeros(2, BLOCK + 1, dtype=torch.long), cache=kv)
    model(torch.zeros(2, BLOCK, dtype=torch.long), cache=kv)
    with pytest.raises(MiniGPTError, match="16 cached"):
        model(torch.zeros(2, 1, dtype=torch.long), cache=kv)
    with pytest.raises(MiniGPTError, match="holds 2 rows"):
        model(torch.zeros(3, 1, dtype=torch.long), cache=KVCache(model, 2))
    for bad in (torch.zeros(1, 0, dtype=torch.long), torch.zeros(4, dtype=torch.long)):
        for cache in (True, False):
            with pytest.raises(MiniGPTError, match="token ids"):
                generate(model, bad, 3, cache=cache)
