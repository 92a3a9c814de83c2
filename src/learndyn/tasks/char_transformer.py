"""A small GPT-style character-level transformer on the English text shipped with Python.

**Corpus.** ``pydoc_data.topics.topics`` -- the language-reference help texts behind ``help("topic")`` --
joined in sorted key order (:func:`pydoc_text`, ~465k characters for CPython 3.11; the text differs between
Python releases, so :class:`CharCorpus` records its SHA-256 and every report should quote it). The vocabulary
is the sorted set of characters of the whole text (~100 symbols). The first ``1 - val_fraction`` of the text
(default 90%) is the training split, the rest the validation split -- a fixed, contiguous split.

**Model** (:class:`CharTransformer`): token + learned position embeddings, ``layers`` pre-LayerNorm blocks
``x <- x + Attn(LN(x))``, ``x <- x + MLP(LN(x))`` with causal multi-head self-attention
(``F.scaled_dot_product_attention(..., is_causal=True)``) and a ``d -> 4d -> d`` GELU MLP, a final LayerNorm
and a linear read-out tied to the token embedding. Initialisation as GPT-2: weights ``N(0, 0.02^2)``, the
residual projections ``N(0, 0.02^2 / (2 layers))``, biases zero. No dropout (runs are deterministic).

**Loss and metric.** The loss is the next-character cross-entropy in nats, averaged over all ``B x T``
positions of a batch of ``T = context`` windows drawn uniformly from the training split. Bits per character
is that loss over ``ln 2``:

.. math::

    \\mathrm{bpc} = -\\frac{1}{N \\ln 2} \\sum_{n=1}^{N} \\ln p_\\theta(c_n \\mid c_{n-T'} \\dots c_{n-1}),

where each of the ``N`` predicted characters is conditioned on the preceding characters of its window
(``T' < T``). ``evaluate`` is the validation loss (nats) on ``eval_windows`` fixed, evenly spaced,
non-overlapping validation windows (cheap: it runs every ``steps/100`` steps of a comparison); ``metrics``
reports ``val_bits_per_char`` on every non-overlapping window of the validation split (the headline, lower is
better) and ``val_loss`` in nats on the same windows.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import nn
from torch.nn import functional as F

from learndyn.tasks.base import Batch, Task
from learndyn.validation import LearndynValueError, check_int, check_real

LN2 = math.log(2.0)
DEFAULT_TARGET_LOSS = 1.60
"""Validation cross-entropy (nats, 2.31 bits/char) defining "steps to target"; see
``benchmarks/bench_tasks_published.py``."""


@lru_cache(maxsize=1)
def pydoc_text() -> str:
    """The help topics of ``pydoc_data.topics`` joined in sorted key order (fixed per Python release)."""
    from pydoc_data.topics import topics

    return "".join(topics[key] for key in sorted(topics))


def encode(vocab: str, text: str) -> torch.Tensor:
    """Token ids (int64) of ``text``: the position of each character in ``vocab``."""
    index = {c: i for i, c in enumerate(vocab)}
    unknown = set(text) - index.keys()
    if unknown:
        raise LearndynValueError(
            f"encode: characters {sorted(unknown)!r} are not in the vocabulary; allowed: the {len(vocab)} "
            "characters of the corpus"
        )
    return torch.tensor([index[c] for c in text], dtype=torch.int64)


@dataclass(frozen=True)
class CharCorpus:
    """A character-level corpus: ``vocab`` (sorted distinct characters) and the encoded splits (int64)."""

    vocab: str
    train: torch.Tensor
    val: torch.Tensor
    sha256: str

    @classmethod
    def from_text(cls, text: str, val_fraction: float = 0.1) -> CharCorpus:
        """Vocabulary from all of ``text``; the last ``val_fraction`` of it is the validation split."""
        vocab = "".join(sorted(set(text)))
        ids = encode(vocab, text)
        n_train = len(text) - int(round(val_fraction * len(text)))
        return cls(vocab, ids[:n_train], ids[n_train:], hashlib.sha256(text.encode("utf-8")).hexdigest())

    def encode(self, text: str) -> torch.Tensor:
        """Token ids of ``text`` (every character must be in the vocabulary)."""
        return encode(self.vocab, text)

    def decode(self, ids: torch.Tensor) -> str:
        """The text of token ids."""
        return "".join(self.vocab[int(i)] for i in ids.reshape(-1))


@lru_cache(maxsize=4)
def pydoc_corpus(val_fraction: float = 0.1) -> CharCorpus:
    """:func:`pydoc_text` as a :class:`CharCorpus` (cached)."""
    return CharCorpus.from_text(pydoc_text(), val_fraction)


def check_heads(d_model: int, heads: int, owner: str) -> None:
    """Raise unless ``heads`` divides ``d_model`` (each head has ``d_model / heads`` dimensions)."""
    if d_model % heads:
        raise LearndynValueError(
            f"{owner}.d_model={d_model} is not a multiple of heads={heads}; allowed: d_model % heads == 0"
        )


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention ``softmax(Q K^T / sqrt(d_head) + mask) V`` per head, projected."""

    def __init__(self, d_model: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, T, d)`` -> ``(B, T, d)``; position ``t`` attends to positions ``<= t`` only."""
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    """One pre-LayerNorm transformer block: ``x + Attn(LN(x))`` then ``x + MLP(LN(x))``."""

    def __init__(self, d_model: int, heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, heads)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class CharTransformer(nn.Module):
    """GPT-style decoder: embeddings, ``layers`` :class:`Block` s, final LayerNorm, tied read-out."""

    def __init__(self, vocab_size: int, context: int = 128, d_model: int = 128, layers: int = 2,
                 heads: int = 4) -> None:
        super().__init__()
        check_heads(d_model, heads, "CharTransformer")
        self.context = context
        self.tok = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(context, d_model)
        self.blocks = nn.ModuleList(Block(d_model, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        self.head.weight = self.tok.weight
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        for block in self.blocks:
            for proj in (block.attn.proj, block.mlp[2]):
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * layers))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Next-character logits ``(B, T, vocab)`` of token ids ``(B, T)``, ``T <= context``."""
        t = ids.shape[-1]
        if t > self.context:
            raise LearndynValueError(
                f"CharTransformer input length={t} exceeds context={self.context}; allowed: <= {self.context}"
            )
        h = self.tok(ids) + self.pos(torch.arange(t, device=ids.device))
        for block in self.blocks:
            h = block(h)
        return self.head(self.ln_f(h))


def sequence_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy (nats) of logits ``(..., V)`` against targets ``(...)``."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def bits_per_char(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean ``-log2 p(target)`` over all positions: :func:`sequence_cross_entropy` / ``ln 2``."""
    return float(sequence_cross_entropy(logits, targets)) / LN2


def windows(ids: torch.Tensor, context: int, count: int | None = None) -> Batch:
    """Non-overlapping ``(inputs, targets)`` windows of ``ids``: ``inputs[i] = ids[s_i : s_i + context]``,
    ``targets[i] = ids[s_i + 1 : s_i + context + 1]``, ``s_i = i * context``. ``count``: that many evenly
    spaced windows of them (all when ``None``)."""
    total = (ids.numel() - 1) // context
    if total < 1:
        raise LearndynValueError(f"windows: {ids.numel()} tokens < context + 1 = {context + 1}")
    if count is None or count >= total:
        chosen = torch.arange(total)
    else:
        chosen = torch.linspace(0, total - 1, count).round().long()
    idx = chosen[:, None] * context + torch.arange(context + 1)
    seq = ids[idx]
    return seq[:, :-1], seq[:, 1:]


@torch.no_grad()
def mean_cross_entropy(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, chunk: int = 64
                       ) -> float:
    """Cross-entropy (nats) averaged over every position of every window, in chunks of ``chunk`` windows."""
    total = 0.0
    for start in range(0, inputs.shape[0], chunk):
        logits = model(inputs[start : start + chunk])
        flat_targets = targets[start : start + chunk].reshape(-1)
        total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), flat_targets, reduction="sum"))
    return total / targets.numel()


def char_transformer(
    *,
    layers: int = 2,
    d_model: int = 128,
    heads: int = 4,
    context: int = 128,
    batch_size: int = 32,
    val_fraction: float = 0.1,
    eval_windows: int = 32,
    target_loss: float = DEFAULT_TARGET_LOSS,
    steps: int = 1000,
) -> Task:
    """Character-level GPT on the pydoc topics text; see the module docstring."""
    owner = "char_transformer"
    layers = check_int("layers", layers, low=1, owner=owner)
    d_model = check_int("d_model", d_model, low=1, owner=owner)
    heads = check_int("heads", heads, low=1, owner=owner)
    check_heads(d_model, heads, owner)
    context = check_int("context", context, low=1, high=4096, owner=owner)
    batch_size = check_int("batch_size", batch_size, low=1, owner=owner)
    val_fraction = check_real("val_fraction", val_fraction, low=0.01, high=0.5, owner=owner)
    eval_windows = check_int("eval_windows", eval_windows, low=1, owner=owner)
    target_loss = check_real("target_loss", target_loss, low=0, low_open=True, owner=owner)
    steps = check_int("steps", steps, low=1, owner=owner)
    corpus = pydoc_corpus(val_fraction)
    vocab_size = len(corpus.vocab)
    eval_inputs, eval_targets = windows(corpus.val, context, eval_windows)
    val_inputs, val_targets = windows(corpus.val, context)
    offsets = torch.arange(context + 1)
    n_starts = corpus.train.numel() - context

    def build_model() -> nn.Module:
        return CharTransformer(vocab_size, context, d_model, layers, heads)

    def sample(gen: torch.Generator) -> Batch:
        starts = torch.randint(0, n_starts, (batch_size,), generator=gen)
        seq = corpus.train[starts[:, None] + offsets]
        return seq[:, :-1], seq[:, 1:]

    def evaluate(model: nn.Module) -> float:
        return mean_cross_entropy(model, eval_inputs, eval_targets)

    def metrics(model: nn.Module) -> dict[str, float]:
        loss = mean_cross_entropy(model, val_inputs, val_targets)
        return {"val_bits_per_char": loss / LN2, "val_loss": loss}

    return Task(
        name="char-transformer",
        description=f"{layers}-layer GPT (d={d_model}, {heads} heads, context {context}) on the pydoc topics "
        f"text, character level ({vocab_size} symbols, sha256 {corpus.sha256[:12]})",
        build_model=build_model,
        sample=sample,
        loss_fn=sequence_cross_entropy,
        evaluate=evaluate,
        target_loss=target_loss,
        steps=steps,
        metrics=metrics,
        metric_name="val_bits_per_char",
        higher_is_better=False,
    )
