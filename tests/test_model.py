"""MiniGPT: the lesson's architecture, size, causality, initial loss, and that it can learn."""

import math
from dataclasses import fields

import pytest
import torch

from minigpt import Batches, MiniGPT, MiniGPTError, Splits, load_tokens
from minigpt.config import ModelConfig
from minigpt.data import tinyshakespeare_path


def test_parameter_count_and_module_names_are_the_lessons():
    assert MiniGPT(65).num_params() == 216_576
    # by hand: embeddings, 4 blocks of (2 LayerNorms, 4 Linear 64x64+b, MLP 64->256->64), ln_f,
    # lm_head without bias
    C, V, T, L = 64, 65, 128, 4
    block = 2 * 2 * C + 4 * (C * C + C) + (C * 4 * C + 4 * C) + (4 * C * C + C)
    assert MiniGPT(V).num_params() == V * C + T * C + L * block + 2 * C + C * V
    names = {n for n, _ in MiniGPT(65).named_parameters()}
    for expected in ["token_emb.weight", "pos_emb.weight", "blocks.0.ln1.weight",
                     "blocks.0.attn.Wq.weight", "blocks.0.attn.Wo.bias", "blocks.3.ln2.bias",
                     "blocks.3.ff.0.weight", "blocks.3.ff.2.bias", "ln_f.weight",
                     "lm_head.weight"]:
        assert expected in names
    assert "lm_head.bias" not in names


def test_init_is_normal_002():
    model = MiniGPT(65, n_embd=256)
    w = torch.cat([m.weight.flatten() for m in model.modules()
                   if isinstance(m, (torch.nn.Linear, torch.nn.Embedding))])
    assert w.std().item() == pytest.approx(0.02, rel=0.02)
    assert abs(w.mean().item()) < 1e-3


def test_causal_later_tokens_never_change_earlier_logits_nor_go_past_the_block():
    model = MiniGPT(65).eval()
    idx = torch.randint(0, 65, (2, 40))
    changed = idx.clone()
    changed[:, 25:] = torch.randint(0, 65, (2, 15))
    a, _ = model(idx)
    b, _ = model(changed)
    torch.testing.assert_close(a[:, :25], b[:, :25])
    assert not torch.allclose(a[:, 25:], b[:, 25:])
    with pytest.raises(MiniGPTError, match="longer than the model's block_size 16: feed it at "
                                           "most 16 tokens .when sampling, the last 16., or "
                                           "build it with a larger block_size"):
        MiniGPT(65, block_size=16)(torch.zeros(1, 17, dtype=torch.long))


def test_dropout_applies_to_the_embeddings_in_training_only():
    """The lesson's embedding dropout: once, on token + position embeddings, and only in
    training (nn.Dropout itself scales and masks; the test checks it is there, fed, and that
    its output, not the embeddings it was given, is what the first block reads)."""
    model = MiniGPT(20, n_embd=16, n_layer=1, n_head=2, block_size=8, dropout=0.5)
    idx = torch.randint(0, 20, (2, 8))
    seen, read = [], []
    model.drop.register_forward_hook(lambda m, args, out: seen.append((args[0], out)))
    model.blocks[0].register_forward_pre_hook(lambda m, args: read.append(args[0]))
    model(idx)
    (x, out), = seen
    torch.testing.assert_close(x, model.token_emb(idx) + model.pos_emb(torch.arange(8)))
    assert torch.equal(read[0], out)
    assert (out == 0).float().mean() > 0.3  # half dropped, in training mode
    model.eval()(idx)
    assert torch.equal(seen[1][1], seen[1][0])


def test_step0_loss_near_ln_vocab(data_dir):
    tokens, tok = load_tokens(tinyshakespeare_path())
    batches = Batches(Splits.from_tokens(tokens), 32, 128, seed=0)
    model = MiniGPT(tok.vocab_size)
    _, loss = model(*batches.get_batch("train"))
    assert abs(loss.item() - math.log(65)) < 0.15


def test_overfits_one_batch():
    model = MiniGPT(65, block_size=32)
    x = torch.randint(0, 65, (4, 32))
    y = torch.randint(0, 65, (4, 32))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(300):
        _, loss = model(x, y)
        if loss.item() < 0.1:
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    assert loss.item() < 0.1


def test_options_beyond_the_lesson():
    tied = MiniGPT(65, tie_weights=True)
    assert tied.lm_head.weight is tied.token_emb.weight
    assert tied.num_params() == 216_576 - 65 * 64
    dropped = MiniGPT(65, dropout=0.5)
    idx = torch.randint(0, 65, (2, 16))
    dropped.train()
    assert not torch.equal(dropped(idx)[0], dropped(idx)[0])  # dropout active in train mode
    dropped.eval()
    assert torch.equal(dropped(idx)[0], dropped(idx)[0])
    plain = MiniGPT(65).eval()  # in eval mode, dropout is the identity: no mask, no scaling,
    plain.load_state_dict(dropped.state_dict())  # so the same weights without it are the oracle
    assert torch.equal(dropped(idx)[0], plain(idx)[0])


def test_from_config_builds_the_model_the_config_describes():
    """Every field reaches the model (a run builds its model with from_config): the oracle is
    the config itself, each field away from its default, and the dropout modules' p."""
    config = ModelConfig(vocab_size=23, n_embd=48, n_head=3, n_layer=2, block_size=16,
                         dropout=0.25, bias=False, tie_weights=True, pos="rope", norm="rmsnorm",
                         qk_norm=True, mlp="relu2", bigram=True, smear=True, value_embeds=1,
                         unet=True, logit_cap=15.0, zero_init=True)
    defaults = ModelConfig()
    assert all(getattr(config, f.name) != getattr(defaults, f.name) for f in fields(config))
    model = MiniGPT.from_config(config)
    assert model.config == config
    drops = [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert drops and set(drops) == {0.25}
