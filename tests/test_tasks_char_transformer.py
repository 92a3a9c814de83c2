"""The character-level transformer task: corpus and split, causality, bits per character by hand, learning."""

import collections
import math

import pytest
import torch

from learndyn.tasks import char_transformer, get_task, make_generator
from learndyn.tasks.char_transformer import (
    CharCorpus,
    CharTransformer,
    bits_per_char,
    pydoc_corpus,
    pydoc_text,
    windows,
)
from learndyn.training import train_loop
from learndyn.validation import LearndynValueError

SMALL = {"layers": 1, "d_model": 32, "heads": 2, "context": 32, "batch_size": 16, "eval_windows": 8}


def test_corpus_is_the_pydoc_text_with_a_sorted_vocabulary_and_a_contiguous_split():
    text = pydoc_text()
    corpus = pydoc_corpus()
    assert len(text) > 300_000
    assert corpus.vocab == "".join(sorted(set(text)))
    assert corpus.train.numel() + corpus.val.numel() == len(text)
    assert corpus.val.numel() == round(0.1 * len(text))
    assert corpus.decode(corpus.train[:200]) == text[:200]
    assert corpus.decode(corpus.val[-200:]) == text[-200:]
    again = CharCorpus.from_text(text)
    assert again.vocab == corpus.vocab and torch.equal(again.val, corpus.val)
    assert again.sha256 == corpus.sha256 and len(corpus.sha256) == 64
    assert torch.equal(corpus.encode(text[:50]), corpus.train[:50])
    with pytest.raises(LearndynValueError, match=r"characters \['\\x00'\] are not in the vocabulary"):
        corpus.encode("a\x00")


def test_windows_are_non_overlapping_shifted_by_one():
    ids = torch.arange(100)
    x, y = windows(ids, 10)
    assert x.shape == (9, 10)  # (100 - 1) // 10 full windows with a next token
    assert torch.equal(x[:, 0], torch.arange(0, 90, 10))
    assert torch.equal(y, x + 1)
    x2, _ = windows(ids, 10, count=3)
    assert torch.equal(x2[:, 0], torch.tensor([0, 40, 80]))  # evenly spaced, first and last included
    with pytest.raises(LearndynValueError, match="context"):
        windows(torch.arange(5), 10)


def test_batches_are_training_windows_with_next_character_targets():
    task = char_transformer(**SMALL)
    x, y = task.sample(make_generator(3))
    assert x.shape == y.shape == (16, 32) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    text_train = pydoc_text()[: pydoc_corpus().train.numel()]
    for row in range(3):  # each window is a substring of the training split
        assert pydoc_corpus().decode(torch.cat([x[row], y[row, -1:]])) in text_train


def test_parameter_count_matches_the_gpt_formula():
    v, t, d, layers = 103, 128, 128, 2
    model = CharTransformer(v, t, d, layers, heads=4)
    # embeddings V d + T d; per block 12 d^2 + 13 d (qkv, proj, 4x MLP, two LayerNorms); final LN 2 d;
    # the read-out is tied to the token embedding
    expected = v * d + t * d + layers * (12 * d * d + 13 * d) + 2 * d
    assert sum(p.numel() for p in model.parameters()) == expected
    assert model.head.weight is model.tok.weight


def test_output_at_position_t_does_not_depend_on_later_tokens():
    model = CharTransformer(20, context=16, d_model=32, layers=2, heads=4)
    ids = torch.randint(0, 20, (3, 16), generator=make_generator(0))
    t = 6
    changed = ids.clone()
    changed[:, t + 1 :] = (changed[:, t + 1 :] + 7) % 20
    with torch.no_grad():
        a, b = model(ids), model(changed)
    torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1], rtol=0, atol=1e-6)
    assert (a[:, t + 1 :] - b[:, t + 1 :]).abs().max() > 1e-3  # later positions do see the change
    with pytest.raises(LearndynValueError, match="exceeds context=16"):
        model(torch.zeros(1, 17, dtype=torch.int64))


def test_bits_per_char_against_a_hand_computation():
    gen = make_generator(1)
    logits = torch.randn(2, 5, 7, generator=gen, dtype=torch.float64)
    targets = torch.randint(0, 7, (2, 5), generator=gen)
    by_hand = 0.0
    for i in range(2):
        for j in range(5):
            row = [float(v) for v in logits[i, j]]
            p = math.exp(row[int(targets[i, j])]) / sum(math.exp(v) for v in row)
            by_hand -= math.log2(p)
    assert bits_per_char(logits, targets) == pytest.approx(by_hand / 10, rel=1e-12)
    uniform = torch.zeros(4, 3, 103)
    assert bits_per_char(uniform, torch.zeros(4, 3, dtype=torch.int64)) == pytest.approx(math.log2(103))


def test_evaluate_and_metrics_are_validation_cross_entropy_by_hand():
    task = char_transformer(**SMALL)
    assert task.metric_name == "val_bits_per_char" and not task.higher_is_better
    model = task.make_model(0)
    corpus = pydoc_corpus()
    x, y = windows(corpus.val, 32, 8)
    with torch.no_grad():
        logp = torch.log_softmax(model(x).double(), dim=-1)
    nats = -float(logp.gather(-1, y[..., None]).mean())
    assert task.evaluate(model) == pytest.approx(nats, rel=1e-5)
    xa, ya = windows(corpus.val, 32)
    assert xa.shape[0] == (corpus.val.numel() - 1) // 32  # metrics use the whole validation split
    with torch.no_grad():
        logp = torch.log_softmax(model(xa).double(), dim=-1)
    nats_all = -float(logp.gather(-1, ya[..., None]).mean())
    values = task.final_metrics(model)
    assert values["val_loss"] == pytest.approx(nats_all, rel=1e-5)
    assert values["val_bits_per_char"] == pytest.approx(nats_all / math.log(2), rel=1e-5)


def _unigram_val_bits_per_char() -> float:
    """Cross-entropy of the validation text under the training split's (add-one) character frequencies."""
    corpus = pydoc_corpus()
    counts = collections.Counter(corpus.train.tolist())
    total, v = corpus.train.numel(), len(corpus.vocab)
    val_counts = collections.Counter(corpus.val.tolist())
    bits = -sum(n * math.log2((counts[c] + 1) / (total + v)) for c, n in val_counts.items())
    return bits / corpus.val.numel()


def test_short_adamw_run_beats_the_unigram_model():
    task = char_transformer(**SMALL)
    model = task.make_model(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    result = train_loop(model, opt, task.sample, task.loss_fn, 150, generator=make_generator(0))
    assert result.status == "completed"
    unigram = _unigram_val_bits_per_char()  # ~4.7 bits: what a model ignoring the context can reach
    assert 4.0 < unigram < 5.5
    assert task.final_metrics(model)["val_bits_per_char"] < unigram - 0.5


def test_default_task_is_registered_with_the_documented_size():
    task = get_task("char-transformer")
    assert task.steps == 1000 and task.target_loss > 0
    model = task.make_model(0)
    assert model.context == 128 and len(model.blocks) == 2 and model.tok.embedding_dim == 128


def test_factory_validates():
    with pytest.raises(LearndynValueError, match=r"char_transformer.d_model=30 is not a multiple of heads=4"):
        char_transformer(d_model=30)
    with pytest.raises(LearndynValueError, match=r"char_transformer.val_fraction=0.9"):
        char_transformer(val_fraction=0.9)
