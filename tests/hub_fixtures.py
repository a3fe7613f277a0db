"""Tiny folders of the exact shape `alps-hf label` and `alps-hf pretrain` write, and a stand-in HfApi.

Shared by test_cards.py and test_publish.py. Everything is generated: no download, no SAM run.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

K = 4
FAKE_TOKEN = "hf_FAKEtokenForTestsOnly0123456789abcdef"


def label_flags(root: Path, **overrides):
    """The `alps-hf label` flags the fixture folder pretends to come from."""
    from alps_hf.labeling.config import LabelConfig

    return LabelConfig(inputs=["tiles"], output=str(root), sam="facebook/sam-vit-base", num_clusters=K,
                       license="cc-by-4.0", **overrides)


def features():
    """The columns of the folder: the labeling stage's own schema, so the fixture cannot drift from it."""
    from alps_hf.labeling.writer import dataset_features

    return dataset_features()


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _rows(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        image = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
        segments = np.zeros((16, 16), dtype=np.uint16)
        segments[:8, :8], segments[8:, 8:] = 1, 2
        classes = [int(i % K), int((i + 1) % K)]
        lut = np.array([255, *classes], dtype=np.uint8)
        rows.append(
            {
                "image": {"bytes": _png(image), "path": None},
                "label": {"bytes": _png(lut[segments]), "path": None},
                "segments": {"bytes": _png(segments), "path": None},
                "segment_class": classes,
                "segment_area": [64, 64],
                "segment_iou": [0.9 + 0.01 * i, 0.95],
                "segment_stability": [0.96, 0.97],
                "segment_kind": ["object", "object"],
                "source": f"tile_{i:03d}.png",
                "meta": json.dumps({"size": [16, 16]}),
            }
        )
    return rows


def make_dataset_folder(root: Path, rows_per_shard: tuple[int, ...] = (3, 2), split: str = "train") -> Path:
    """A labeled dataset folder as `alps-hf label --output root` writes it (plus work/ junk)."""
    from datasets import Dataset

    from alps_hf.hub.cards import write_dataset_card

    root.mkdir(parents=True, exist_ok=True)
    (root / "data").mkdir(exist_ok=True)
    n = len(rows_per_shard)
    files, offset, total_bytes = [], 0, 0
    for index, count in enumerate(rows_per_shard):
        rel = f"data/{split}-{index:05d}-of-{n:05d}.parquet"
        Dataset.from_list(_rows(count, seed=offset), features=features()).to_parquet(str(root / rel))
        files.append(rel)
        total_bytes += (root / rel).stat().st_size
        offset += count
    total = sum(rows_per_shard)
    from alps_hf.labeling.run import dataset_info_base

    flags = label_flags(root, split=split)
    info = {
        # the record `alps-hf label` starts from, then what pass 2 adds (as labeling's finish_folder does)
        **dataset_info_base(flags, "generated test tiles"),
        "alps_hf_version": "0.1.0",
        "num_clusters": K,
        "feature_normalization": "l2",
        "splits": {split: {"num_rows": total, "files": files, "num_bytes": total_bytes}},
        "stats": {
            "images": total,
            "failed": 1,
            "images_without_masks": 0,
            "masks_total": 2 * total,
            "masks_per_image_mean": 2.0,
            "masks_per_image_median": 2.0,
            "pixel_coverage": 0.5,
            "class_pixel_histogram": [640, 320, 160, 80],
            "class_mask_counts": [5, 3, 1, 1],
        },
        "features": features().to_dict(),
    }
    (root / "alps_dataset.json").write_text(json.dumps(info, indent=2))
    (root / "id2label.json").write_text(json.dumps({str(i): f"cluster_{i:02d}" for i in range(K)}))
    from safetensors.numpy import save_file

    save_file({"centroids": np.eye(K, 8, dtype=np.float32)}, str(root / "cluster_model.safetensors"))
    (root / "cluster_model.json").write_text(json.dumps({"num_clusters": K, "feature_dim": 8}))
    Image.new("RGB", (8, 8), (10, 20, 30)).save(root / "preview.png")
    from alps_hf.config_utils import save_config

    save_config(flags, root / "label_config.json", alps_hf_version="0.1.0")
    (root / "failures.jsonl").write_text(json.dumps({"path": "broken.png", "reason": "truncated"}) + "\n")
    (root / "work").mkdir(exist_ok=True)
    (root / "work" / "pass1-00000.parquet").write_bytes(b"intermediate")
    (root / "data" / f".{split}-00000-of-{n:05d}.parquet.tmp-99").write_bytes(b"half written")
    write_dataset_card(root)
    return root


def tiny_segformer(num_labels: int = 3, seed: int = 0):
    import torch
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    torch.manual_seed(seed)
    id2label = {i: f"class_{i}" for i in range(num_labels)}
    config = SegformerConfig(
        num_labels=num_labels,
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
        depths=[1, 1, 1, 1],
        hidden_sizes=[8, 16, 24, 32],
        num_attention_heads=[1, 1, 1, 1],
        decoder_hidden_size=16,
    )
    return SegformerForSemanticSegmentation(config).eval()


def make_model_folder(
    root: Path, metrics: bool = True, task: str = "pretrain", dataset: str = "alps/isaid-pseudo"
):
    """A trained model folder as `alps-hf pretrain --output root` writes it; returns (root, model)."""
    from transformers import SegformerImageProcessorPil

    from alps_hf.hub.cards import write_model_card

    model = tiny_segformer()
    root.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(root)
    SegformerImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(root)
    (root / "id2label.json").write_text(json.dumps({str(k): v for k, v in model.config.id2label.items()}))
    training = {
        "alps_hf_version": "0.1.0",
        "dataset": dataset,
        "base_model": "nvidia/mit-b0" if task == "pretrain" else None,
        "task": task,
        "model": "segformer",
        "learning_rate": 6e-5,
        "max_steps": 4,
        "seed": 0,
    }
    (root / "training_config.json").write_text(json.dumps(training))
    if metrics:
        result = {
            "eval": {
                "mean_iou": 0.3125,
                "mean_accuracy": 0.5,
                "overall_accuracy": 0.75,
                "per_class_iou": {"class_0": 0.25, "class_1": 0.375, "class_2": None},
            },
            "step": 4,
            "dataset": dataset,
            "split": "validation",
        }
        (root / "metrics.json").write_text(json.dumps(result))
    Image.new("RGB", (8, 8)).save(root / "training_curve.png")
    ckpt = root / "checkpoints" / "checkpoint-2"
    ckpt.mkdir(parents=True)
    (ckpt / "optimizer.bin").write_bytes(b"optimizer state")
    (root / "checkpoint-4").mkdir()
    (root / "checkpoint-4" / "model.safetensors").write_bytes(b"old")
    (root / ".model.safetensors.tmp-1").write_bytes(b"partial")
    write_model_card(root)
    return root, model


def snapshot(folder: Path) -> dict[str, str]:
    """Path -> sha256 of every file under folder (to prove a folder was left untouched)."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


class CommitInfo:
    def __init__(self, url: str):
        self.commit_url = url


class FakeHfApi:
    """Stand-in for `huggingface_hub.HfApi`: records calls, keeps a copy of each uploaded folder.

    Args:
        token: what `HfApi.token` would hold (None: fall back to HF_TOKEN / the token file).
        hub_readme: README.md text currently on the Hub (None: no README there).
        refuse: HTTP status that create_repo answers with (401/403), or None.
        fail_upload: exception upload_folder raises, or None.
    """

    def __init__(self, received: Path, token=None, hub_readme=None, refuse=None, fail_upload=None):
        self.token = token
        self.hub_readme = hub_readme
        self.refuse = refuse
        self.fail_upload = fail_upload
        self.received = received
        self.calls: list[tuple[str, dict]] = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        if self.refuse:
            import httpx2
            from huggingface_hub.errors import HfHubHTTPError

            request = httpx2.Request("POST", "https://huggingface.co/api/repos/create")
            response = httpx2.Response(self.refuse, request=request)
            raise HfHubHTTPError(
                f"{self.refuse} Client Error: you have no rights in this namespace", response=response
            )
        return f"https://huggingface.co/{repo_id}"

    def create_branch(self, repo_id, **kwargs):
        self.calls.append(("create_branch", {"repo_id": repo_id, **kwargs}))

    def hf_hub_download(self, repo_id, filename, **kwargs):
        self.calls.append(("hf_hub_download", {"repo_id": repo_id, "filename": filename, **kwargs}))
        if self.hub_readme is None:
            from huggingface_hub.errors import EntryNotFoundError

            raise EntryNotFoundError(f"{filename} not found in {repo_id}")
        path = Path(kwargs["local_dir"]) / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.hub_readme, encoding="utf-8")
        return str(path)

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", dict(kwargs)))
        if self.fail_upload is not None:
            raise self.fail_upload
        if self.received.exists():
            shutil.rmtree(self.received)
        shutil.copytree(kwargs["folder_path"], self.received)
        return CommitInfo(f"https://huggingface.co/{kwargs['repo_id']}/commit/0123abcd")

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def uploaded_files(self) -> list[str]:
        return sorted(
            p.relative_to(self.received).as_posix() for p in self.received.rglob("*") if p.is_file()
        )
