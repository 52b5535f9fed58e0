"""The lesson's own code, transcribed: the oracle that tests and benchmarks measure minigpt
against, and something a learner can import to set beside it.

    from minigpt import lesson
    model = lesson.MiniGPT(vocab_size)             # sections 5 and 6
    xb, yb = lesson.get_batch(train_data, 32, 128)  # section 7: batch 32, block 128
    get = lambda split: lesson.get_batch(train_data if split == "train" else val_data, 32, 128)
    loss = lesson.train(model, optimizer, get, steps=5000)  # section 8
    idx = lesson.generate(model, context, 200)      # section 9

The classes are the lesson's line for line (three Linear q/k/v, scores masked with masked_fill,
an MLP with bias everywhere); where the lesson's functions read globals (`train_data`,
`block_size`, `batch_size`), they take them as arguments. Nothing here imports the rest of
minigpt.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class MiniGPT(nn.Module):
    def __init__(self, vocab_size, n_embd=64, n_head=4, n_layer=4, block_size=128):
        super().__init__()
        self.block_size = block_size
        self.token_emb = nn.Embedding(vocab_size, n_embd)
        self.pos_emb = nn.Embedding(block_size, n_embd)
        self.blocks = nn.ModuleList([TransformerBlock(n_embd, n_head) for _ in range(n_layer)])
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.apply(self._init_weights)

    def _init_weights(self, m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)

    def forward(self, idx, targets=None):
        B, T = idx.shape
        x = self.token_emb(idx) + self.pos_emb(torch.arange(T, device=idx.device))  # (B, T, C)
        for block in self.blocks:
            x = block(x)
        x = self.ln_f(x)
        logits = self.lm_head(x)  # (B, T, vocab)

        loss = None
        if targets is not None:
            # (B*T, vocab) scores against (B*T,) targets
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss


class TransformerBlock(nn.Module):
    def __init__(self, n_embd, n_head):
        super().__init__()
        self.ln1 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head)
        self.ln2 = nn.LayerNorm(n_embd)
        self.ff = nn.Sequential(
            nn.Linear(n_embd, 4 * n_embd),
            nn.GELU(),
            nn.Linear(4 * n_embd, n_embd)
        )

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        x = x + self.ff(self.ln2(x))
        return x


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd, n_head):
        super().__init__()
        self.n_head = n_head
        self.d_k = n_embd // n_head
        self.Wq = nn.Linear(n_embd, n_embd)
        self.Wk = nn.Linear(n_embd, n_embd)
        self.Wv = nn.Linear(n_embd, n_embd)
        self.Wo = nn.Linear(n_embd, n_embd)

    def forward(self, x):
        B, T, C = x.shape
        q = self.Wq(x).view(B, T, self.n_head, self.d_k).transpose(1, 2)  # (B, nh, T, hs)
        k = self.Wk(x).view(B, T, self.n_head, self.d_k).transpose(1, 2)  # (B, nh, T, hs)
        v = self.Wv(x).view(B, T, self.n_head, self.d_k).transpose(1, 2)  # (B, nh, T, hs)

        att = (q @ k.transpose(-2, -1)) * (1.0 / (self.d_k ** 0.5))  # (B, nh, T, T)
        mask = torch.tril(torch.ones(T, T, device=x.device))
        att = att.masked_fill(mask == 0, float("-inf"))
        att = F.softmax(att, dim=-1)
        y = att @ v  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.Wo(y)


def get_batch(data, batch_size, block_size):
    """Section 7's get_batch(split), given the split's tensor instead of a split name (and the
    sizes in minigpt.get_batch's order)."""
    ix = torch.randint(len(data) - block_size, (batch_size,))
    x = torch.stack([data[i:i + block_size] for i in ix])
    y = torch.stack([data[i + 1:i + block_size + 1] for i in ix])
    return x, y


def train_step(model, optimizer, get_batch):
    """One iteration of section 8's loop: batch, forward, zero_grad, backward, step.
    get_batch(split) -> (xb, yb), as section 7 defines it."""
    xb, yb = get_batch('train')
    logits, loss = model(xb, yb)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss


def train(model, optimizer, get_batch, steps=5000, eval_every=500):
    """Section 8's loop: train_step, and every eval_every steps the validation estimate over
    10 batches, printed. Returns the last step's loss."""
    for step in range(steps):
        loss = train_step(model, optimizer, get_batch)
        if step % eval_every == 0:
            # Validation
            model.eval()
            val_loss = 0
            with torch.no_grad():
                for _ in range(10):
                    x_val, y_val = get_batch('val')
                    _, loss_val = model(x_val, y_val)
                    val_loss += loss_val.item()
            model.train()
            print(f"Step {step} | Train Loss: {loss.item():.4f} | Val Loss: {val_loss/10:.4f}")
    return loss


@torch.no_grad()
def generate(model, idx, max_new_tokens=200):
    """Section 9's generate, with the model's own block_size for the global one."""
    block_size = model.block_size
    model.eval()
    for _ in range(max_new_tokens):
        idx_cond = idx if idx.size(1) <= block_size else idx[:, -block_size:]
        logits, _ = model(idx_cond)
        logits = logits[:, -1, :]  # (B, vocab): the last position's
        probs = F.softmax(logits, dim=-1)
        idx_next = torch.multinomial(probs, num_samples=1)
        idx = torch.cat([idx, idx_next], dim=1)
    model.train()
    return idx
