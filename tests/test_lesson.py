"""The lesson's own code (minigpt.lesson, transcribed from its pages) run against minigpt's
MiniGPT: its data section, its training loop, and its generate against minigpt's sampler.

Only the data source (a local text instead of wget) and the step counts differ."""

import re

import torch

from minigpt import MiniGPT, lesson


def test_lessons_training_loop_generate_and_gradient_flow(small_text, capsys):
    torch.manual_seed(0)
    # --- the lesson's data section ---
    text = open(small_text).read()
    chars = sorted(list(set(text)))
    vocab_size = len(chars)
    stoi = {ch: i for i, ch in enumerate(chars)}
    itos = {i: ch for i, ch in enumerate(chars)}
    encode = lambda s: [stoi[c] for c in s]  # noqa: E731
    decode = lambda l: "".join(itos[i] for i in l)  # noqa: E731, E741
    data = torch.tensor(encode(text), dtype=torch.long)
    train_data, val_data = data[: int(0.9 * len(data))], data[int(0.9 * len(data)) :]
    block_size = 128

    def get_batch(split):
        data = train_data if split == "train" else val_data
        return lesson.get_batch(data, 32, block_size)

    # --- the lesson's model and training loop (section 8, fewer steps) ---
    model = MiniGPT(vocab_size, block_size=block_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    loss = lesson.train(model, optimizer, get_batch, steps=30, eval_every=10)
    printed = capsys.readouterr().out
    first = float(re.search(r"Step 0 \| Train Loss: ([\d.]+)", printed).group(1))
    assert "Step 20 | Train Loss" in printed and "Val Loss" in printed
    assert loss.item() < first - 0.2  # it learns (deterministic: seeded above)
    logits, _ = model(*get_batch("train"))
    assert logits.shape == (32, block_size, vocab_size)

    # --- section 9: the lesson's generate, and minigpt's sampler behind model.generate ---
    context = torch.tensor(encode("the"), dtype=torch.long).unsqueeze(0)
    torch.manual_seed(5)
    theirs = decode(lesson.generate(model, context, 150)[0].tolist())
    torch.manual_seed(5)
    ours = decode(model.generate(context, 150)[0].tolist())
    assert theirs == ours and len(ours) == 153  # the same draws, past block_size
    assert model.training  # the mode it had, given back

    # --- section 11: gradient flow ---
    for name, param in model.named_parameters():
        if param.grad is not None:
            print(f"{name}: grad mean={param.grad.abs().mean():.6f}, std={param.grad.std():.6f}")
    assert "blocks.0.attn.Wq.weight: grad mean=" in capsys.readouterr().out
