"""The classifier head, the trainable sets (counted by hand), last-token reading, the task, classifier folders."""

from __future__ import annotations

import pytest
import torch
from conftest import ByteTokenizer, byte_gpt

from llmscratch.data.classification import ClassificationData, ClassificationDataset
from llmscratch.model import build_model, get_config
from llmscratch.model.heads import add_classifier_head, apply_trainable, parse_trainable, set_trainable
from llmscratch.train.evaluate import means, task_sums
from llmscratch.train.tasks import Task
from llmscratch.train.tasks.classify import ClassificationTask, eval_batches, last_token_logits
from llmscratch.utils import UserError
from llmscratch.weights.classifier import ClassifierInfo, base_fingerprint, restore_trained, save_classifier

tiny = byte_gpt  # emb 32, 2 layers, 4 heads, vocab 257 (bytes + end of text)


def build_classifier(model, num_classes, spec, seed=None):
    add_classifier_head(model, num_classes, seed=seed)
    return set_trainable(model, spec)


# Hand counts for CFG. A block: norm1 2*32; qkv 32*96 + 96; proj 32*32 + 32; norm2 2*32; fc 32*128 + 128;
# ffn.proj 128*32 + 32.
BLOCK = 64 + (32 * 96 + 96) + (32 * 32 + 32) + 64 + (32 * 128 + 128) + (128 * 32 + 32)
FINAL_NORM = 64


def head(c):
    return 32 * c + c


def test_block_count_by_hand_matches_the_model():
    assert BLOCK == 12704
    assert sum(p.numel() for p in tiny().blocks[0].parameters()) == BLOCK


@pytest.mark.parametrize(
    ("flag", "classes", "expected"),
    [
        ("last-block", 2, BLOCK + FINAL_NORM + 32 * 2 + 2),
        ("last-2", 3, 2 * BLOCK + FINAL_NORM + head(3)),
        # LoRA rank 4 on qkv (32->96), proj (32->32), fc (32->128), ffn.proj (128->32) of both blocks + head.
        ("lora", 2, 2 * 4 * ((32 + 96) + (32 + 32) + (32 + 128) + (128 + 32)) + head(2)),
    ],
)
def test_trainable_counts(flag, classes, expected):
    model = tiny()
    summary = build_classifier(model, classes, parse_trainable(flag, lora_rank=4, lora_alpha=8))
    assert summary["trainable_params"] == expected
    assert model.num_params(trainable_only=True) == expected


def test_llama_counts_by_hand():
    # llama-tiny: RMSNorm weights only, no biases; qkv 32 -> 64, proj 32 -> 32, gate_up 32 -> 128, down 64 -> 32.
    block = 32 + 32 * 64 + 32 * 32 + 32 + 3 * 32 * 64
    torch.manual_seed(0)
    model = build_model(get_config("llama-tiny"))
    assert build_classifier(model, 2, parse_trainable("last-block"))["trainable_params"] == block + 32 + head(2)
    torch.manual_seed(0)
    model = build_model(get_config("llama-tiny"))
    spec = parse_trainable("lora", lora_rank=2, lora_alpha=2)
    expected = 2 * 2 * ((32 + 64) + (32 + 32) + (32 + 128) + (64 + 32)) + head(2)  # one adapter on gate_up
    assert build_classifier(model, 2, spec)["trainable_params"] == expected


def test_all_trains_everything_and_the_head_is_untied():
    model = tiny()
    vocab_total = model.num_params()  # tied: the head shares the embedding
    summary = build_classifier(model, 2, parse_trainable("all"))
    assert model.head.weight.shape == (2, 32)
    assert model.head.weight is not model.tok_emb.weight
    assert summary["trainable_params"] == summary["total_params"] == vocab_total + head(2)


def test_lora_on_attention_only():
    model = tiny()
    spec = parse_trainable("lora", lora_rank=2, lora_alpha=2, lora_targets=["attn.*"])
    summary = build_classifier(model, 2, spec)
    assert summary["lora_layers"] == 4
    assert summary["trainable_params"] == 2 * 2 * ((32 + 96) + (32 + 32)) + head(2)


def test_parse_trainable_errors():
    for bad in ("last-0", "first-block", "some", "last-x"):
        with pytest.raises(UserError, match="trainable must be"):
            parse_trainable(bad)
    with pytest.raises(UserError, match="only 2 blocks"):
        set_trainable(add_classifier_head(tiny(), 2), parse_trainable("last-3"))
    with pytest.raises(UserError, match="head"):
        set_trainable(add_classifier_head(tiny(), 2), parse_trainable("lora", lora_targets=["head"]))
    with pytest.raises(UserError, match="rank"):
        parse_trainable("lora", lora_rank=0)
    with pytest.raises(UserError, match="lora_alpha must be > 0, got nan"):
        parse_trainable("lora", lora_alpha=float("nan"))


def test_apply_trainable_for_any_fine_tuning():
    """The reusable choice: the vocabulary head kept frozen (train_head=False), LoRA adapters only."""
    model = tiny()
    summary = apply_trainable(model, "lora", lora_rank=2, lora_alpha=4, train_head=False)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all(n.endswith((".lora_A", ".lora_B")) for n in trained)
    assert summary["trainable"] == "lora" and summary["lora_layers"] == 8
    model = tiny()
    apply_trainable(model, "last-2")
    assert all(p.requires_grad for p in model.blocks.parameters()) and model.head.weight.requires_grad


def test_last_token_logits_ignore_right_padding():
    model = add_classifier_head(tiny(), 3).eval()
    rows = [torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(n)) for n in (5, 9, 2)]
    ids = torch.full((3, 9), 256)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
    with torch.no_grad():
        batched = last_token_logits(model, ids, torch.tensor([4, 8, 1]))
        for i, r in enumerate(rows):
            alone = model(r[None])[0, -1]
            torch.testing.assert_close(batched[i], alone, rtol=1e-5, atol=1e-5)


def dataset(n: int, seed: int = 0):
    """Learnable data: the label is the first character ('a' -> 0, 'b' -> 1, 'c' -> 2); lengths vary."""
    g = torch.Generator().manual_seed(seed)
    texts, labels = [], []
    for i in range(n):
        y = i % 3
        noise = "".join(chr(100 + int(c)) for c in torch.randint(0, 20, (int(torch.randint(2, 12, (1,), generator=g)),),
                                                                   generator=g))
        texts.append("abc"[y] + noise)
        labels.append(y)
    return ClassificationDataset(ClassificationData(texts, labels, ["a", "b", "c"]), ByteTokenizer(), max_length=16)


def test_task_batches_and_metrics():
    train, val = dataset(30), dataset(12, seed=1)
    task = ClassificationTask(train, val, pad_id=256, seed=7)
    assert isinstance(task, Task)
    assert task.num_train_batches(8) == 3
    epoch0 = list(task.train_batches(0, 8))
    assert len(epoch0) == 3 and all(len(b[3]) == 8 for b in epoch0)
    assert [b[0].tolist() for b in task.train_batches(0, 8, start=1)] == [b[0].tolist() for b in epoch0[1:]]
    epoch1 = list(task.train_batches(1, 8))
    assert [b[3].tolist() for b in epoch0] != [b[3].tolist() for b in epoch1]  # reshuffled per epoch
    # Two ranks with batch 4 together see what one process sees with batch 8.
    r0, r1 = list(task.train_batches(0, 4, rank=0, world_size=2)), list(task.train_batches(0, 4, rank=1, world_size=2))
    assert sorted(r0[0][3].tolist() + r1[0][3].tolist()) == sorted(epoch0[0][3].tolist())
    assert sum(len(b[3]) for b in task.val_batches(5)) == 12
    model = add_classifier_head(tiny(), 3)
    batch = epoch0[0]
    loss = task.loss(model, batch)
    assert loss.ndim == 0 and loss.requires_grad
    correct, n = task.metrics(model, batch)["accuracy"]
    assert n == 8 and 0 <= correct <= 8
    model.eval()
    with torch.no_grad():  # evaluate_batch: one forward pass for both; the same answers as loss and metrics
        loss = task.loss(model, batch)
        assert task.metrics(model, batch) == task.metrics(model, batch) == {"accuracy": (correct, n)}
        both = task.evaluate_batch(model, batch)
        assert float(both[0]) == pytest.approx(float(loss)) and both[1] == {"accuracy": (correct, n)}
    assert task.batch_tokens(batch) == int(batch[1].sum()) < batch[0].numel()
    sums = task_sums(model, task, eval_batches(val, 5, 256), torch.device("cpu"))
    assert sums["loss"][1] == sums["accuracy"][1] == 12 and 0 <= means(sums)["accuracy"] <= 1


@pytest.mark.parametrize("flag", ["last-block", "lora", "all"])
def test_classifier_folder_round_trip(tmp_path, flag):
    spec = parse_trainable(flag, lora_rank=2, lora_alpha=4)
    model = tiny()
    build_classifier(model, 3, spec, seed=5)
    with torch.no_grad():  # stand-in for training: change every trainable tensor
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    info = ClassifierInfo("base", ["a", "b", "c"], 16, spec.to_dict(), base_fingerprint(model, trainable), 256, "base")
    save_classifier(model, tmp_path, info)
    saved = (tmp_path / "classifier.safetensors").stat().st_size
    if flag != "all":
        assert saved < 4 * model.num_params() / 2  # only the trainable part is written

    fresh = tiny()  # the same base model, rebuilt
    build_classifier(fresh, 3, info.spec)
    assert base_fingerprint(fresh, trainable) == info.base_fingerprint
    restore_trained(fresh, tmp_path, info)
    x = torch.randint(0, 256, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), model.eval()(x))


def test_fingerprint_tells_base_models_apart():
    assert base_fingerprint(tiny(seed=0), []) == base_fingerprint(tiny(seed=0), [])
    assert base_fingerprint(tiny(seed=1), []) != base_fingerprint(tiny(seed=0), [])
