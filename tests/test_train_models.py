"""Model factory: named variants, backbone loading, head swap, architecture checks."""

import pytest
import torch

from alps_hf.errors import CheckpointError, ConfigError
from alps_hf.training.models import (
    KNOWN_MODELS,
    SEGFORMER_VARIANTS,
    backbone_prefix,
    build_config,
    build_model,
    resolve_model,
)
from train_helpers import TINY_MASK2FORMER, TINY_SEGFORMER

LABELS5 = {i: f"cluster_{i:02d}" for i in range(5)}
LABELS3 = {0: "building", 1: "road", 2: "water"}


def _encoder(model) -> dict[str, torch.Tensor]:
    prefix = backbone_prefix(model)
    return {k: v for k, v in model.state_dict().items() if k.startswith(prefix)}


def test_named_configs_match_published_checkpoints():
    b2 = build_config(resolve_model("segformer-b2", from_scratch=True), LABELS5)
    assert b2.hidden_sizes == [64, 128, 320, 512] and b2.depths == [3, 4, 6, 3] and b2.decoder_hidden_size == 768
    assert b2.num_labels == 5 and b2.semantic_loss_ignore_index == 255 and b2.label2id["cluster_03"] == 3
    b5 = build_config(resolve_model("segformer-b5", from_scratch=True), LABELS3)
    assert b5.depths == [3, 6, 40, 3]
    swin_b = build_config(resolve_model("mask2former-swin-base", from_scratch=True), LABELS3)
    assert swin_b.backbone_config.embed_dim == 128 and swin_b.backbone_config.depths == [2, 2, 18, 2]
    assert swin_b.num_labels == 3
    assert resolve_model("segformer-b1").backbone == "nvidia/mit-b1"  # ImageNet encoder unless --from-scratch
    assert set(SEGFORMER_VARIANTS) <= set(KNOWN_MODELS)


def test_head_swap_keeps_encoder_weights(tmp_path):
    for name, overrides in (("segformer-b0", TINY_SEGFORMER), ("mask2former-swin-tiny", TINY_MASK2FORMER)):
        torch.manual_seed(0)
        pre = build_model(resolve_model(name, from_scratch=True, overrides=overrides), LABELS5)
        pre.save_pretrained(tmp_path / name)
        ft = build_model(resolve_model(None, init=str(tmp_path / name)), LABELS3)
        a, b = _encoder(pre), _encoder(ft)
        assert a.keys() == b.keys() and len(a) > 10
        for key in a:
            assert torch.equal(a[key], b[key]), key
        assert ft.config.id2label == LABELS3 and ft.config.num_labels == 3


def test_same_number_of_other_classes_resets_the_head(tmp_path):
    torch.manual_seed(0)
    pre = build_model(resolve_model("segformer-b0", from_scratch=True, overrides=TINY_SEGFORMER), {0: "a", 1: "b", 2: "c"})
    with torch.no_grad():
        pre.decode_head.classifier.weight.fill_(7.0)
    pre.save_pretrained(tmp_path / "pre")
    same = build_model(resolve_model(None, init=str(tmp_path / "pre")), {0: "a", 1: "b", 2: "c"})
    assert torch.all(same.decode_head.classifier.weight == 7.0)  # same classes: head kept
    other = build_model(resolve_model(None, init=str(tmp_path / "pre")), LABELS3)
    assert not torch.any(other.decode_head.classifier.weight == 7.0)  # other classes: re-initialised
    # ... the way transformers initialises a new SegFormer head: normal(0, initializer_range), zero bias.
    head = other.decode_head.classifier
    assert torch.all(head.bias == 0) and 0.5 * 0.02 < float(head.weight.std()) < 2 * 0.02


def test_backbone_weights_load_from_folder(tmp_path):
    from transformers import SegformerConfig, SegformerModel, SwinBackbone, SwinConfig

    torch.manual_seed(1)
    mit = SegformerModel(SegformerConfig(**{k: v for k, v in TINY_SEGFORMER.items() if k != "decoder_hidden_size"}))
    mit.save_pretrained(tmp_path / "mit")
    model = build_model(resolve_model("segformer-b0", backbone=str(tmp_path / "mit"), overrides=TINY_SEGFORMER), LABELS3)
    for key, value in mit.state_dict().items():
        assert torch.equal(model.segformer.state_dict()[key], value), key

    swin_kwargs = {**TINY_MASK2FORMER["backbone_config"], "out_features": ["stage1", "stage2", "stage3", "stage4"]}
    swin = SwinBackbone(SwinConfig(**swin_kwargs))
    swin.save_pretrained(tmp_path / "swin")
    m2f = build_model(resolve_model("mask2former-swin-tiny", backbone=str(tmp_path / "swin"), overrides=TINY_MASK2FORMER), LABELS3)
    encoder = m2f.model.pixel_level_module.encoder.state_dict()
    for key, value in swin.state_dict().items():
        assert torch.equal(encoder[key], value), key

    with pytest.raises(CheckpointError, match="cannot be loaded into segformer-b0"):
        build_model(resolve_model("segformer-b0", backbone=str(tmp_path / "mit")), LABELS3)  # b0 widths != tiny


def test_model_flag_errors(tmp_path):
    from transformers import SwinConfig

    with pytest.raises(ConfigError, match=r"unknown --model 'segformer-b9'; known names: segformer-b0, .*mask2former-swin-base"):
        resolve_model("segformer-b9")
    with pytest.raises(ConfigError, match="contradict"):
        resolve_model("segformer-b0", backbone="nvidia/mit-b0", from_scratch=True)
    with pytest.raises(ConfigError, match="not valid JSON"):
        resolve_model("segformer-b0", from_scratch=True, overrides="{hidden")
    SwinConfig().save_pretrained(tmp_path / "swin")
    with pytest.raises(CheckpointError, match=r"is a 'swin' model.*--backbone"):
        resolve_model(None, init=str(tmp_path / "swin"))


def _old_lr_lambda(schedule: str, warmup: int, total: int, power: float = 1.0):
    """The hand-rolled schedule alps_hf had before transformers.get_scheduler (the reference)."""
    import math

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        if schedule == "linear":
            return 1.0 - progress
        return (1.0 - progress) ** power

    return factor


def _lr_sequence(schedule: str, total: int, **flags) -> list[float]:
    """The learning rate of each of the `total` updates of a run (peak 1.0), from build_scheduler,
    then the one logged after the last update (the schedule's end)."""
    from alps_hf.training.config import TrainConfig
    from alps_hf.training.loop import build_scheduler

    config = TrainConfig(dataset="d", output="o", lr_scheduler=schedule, **flags)
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_scheduler(optimizer, config, total)
    lrs = []
    for _ in range(total):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return [*lrs, optimizer.param_groups[0]["lr"]]


def test_optimizer_groups_and_schedule():
    from alps_hf.training.loop import param_groups

    model = build_model(resolve_model("segformer-b0", from_scratch=True, overrides=TINY_SEGFORMER), LABELS3)
    groups = param_groups(model, lr=1e-3, backbone_lr=1e-4, weight_decay=0.01)
    by_id = {id(p): g for g in groups for p in g["params"]}
    assert by_id[id(model.segformer.stages[0].patch_embeddings.proj.weight)]["lr"] == 1e-4
    assert by_id[id(model.decode_head.classifier.weight)]["lr"] == 1e-3
    assert by_id[id(model.decode_head.classifier.bias)]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    # A 10-step poly run with 2 warmup steps: 1/3, 2/3, then 1 down to 0 after the last update.
    poly = _lr_sequence("poly", 10, warmup_steps=2, poly_power=1.0)
    assert [round(poly[s], 4) for s in (0, 1, 2, 6, 10)] == [round(1 / 3, 4), round(2 / 3, 4), 1.0, 0.5, 0.0]
    cosine = _lr_sequence("cosine", 10, warmup_steps=0)
    assert cosine[0] == 1.0 and cosine[5] == pytest.approx(0.5) and cosine[10] == pytest.approx(0.0)


@pytest.mark.parametrize(("schedule", "total", "flags"), [
    ("poly", 100, {}),  # the defaults: poly, power 1, warmup 5 % of the steps
    ("poly", 7, {}),  # so short that the default warmup rounds to 0
    ("poly", 40, {"poly_power": 0.9, "warmup_steps": 3}),
    ("cosine", 50, {}),
    ("linear", 30, {"warmup_steps": 4}),
    ("constant", 20, {"warmup_ratio": 0.2}),
])
def test_get_scheduler_gives_the_old_learning_rates(schedule, total, flags):
    """transformers.get_scheduler replaced the hand-rolled lambda: the same lr at every update."""
    from alps_hf.training.config import TrainConfig
    from alps_hf.training.loop import warmup_steps

    warmup = warmup_steps(TrainConfig(dataset="d", output="o", **flags), total)
    old = _old_lr_lambda(schedule, warmup, total, flags.get("poly_power", 1.0))
    assert _lr_sequence(schedule, total, **flags) == pytest.approx([old(s) for s in range(total + 1)], rel=1e-12, abs=1e-15)


def test_warmup_must_end_before_the_run():
    from alps_hf.training.config import TrainConfig
    from alps_hf.training.loop import warmup_steps

    with pytest.raises(ConfigError, match="--warmup-steps 5 must be below --max-steps 5"):
        TrainConfig(dataset="d", output="o", warmup_steps=5, max_steps=5)
    with pytest.raises(ConfigError, match=r"--warmup-steps 8 is not below the run's 6 optimizer steps.*--epochs"):
        warmup_steps(TrainConfig(dataset="d", output="o", warmup_steps=8), 6)
