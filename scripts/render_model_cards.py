"""Render the cards of the flagship artifacts into model_cards/ (templates to be filled by real runs).

    python scripts/render_model_cards.py          # rewrite model_cards/*/README.md
    python scripts/render_model_cards.py --check  # exit 1 when a committed card is out of date

The cards are rendered by the same code that `alps-hf label`, `alps-hf pretrain` and
`alps-hf push` use, from the recipes' SETTINGS only (scripts/build_isaid_pseudo.py,
scripts/build_potsdam_pseudo.py, scripts/pretrain_and_publish.sh). Nothing is measured here, so
every statistic and metric reads "not yet measured"; the real cards are rendered from the
artifacts' own alps_dataset.json / metrics.json when the recipes run. tests/test_model_cards.py
keeps these files in sync with the templates.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "model_cards"
sys.path.insert(0, str(Path(__file__).resolve().parent))

BANNER = (
    "> **Template, not a measured artifact.** Rendered by `scripts/render_model_cards.py` from the recipe's "
    "settings before the artifact was built: every value marked *not yet measured* is filled in from the "
    "real run's files when the recipe publishes it.\n"
)


def _with_banner(card) -> str:
    text = str(card)
    head, sep, body = text.partition("\n---\n")  # after the YAML block
    return f"{head}{sep}\n{BANNER}{body}"


def dataset_info(repo_id: str, pretty_name: str, source_text: str, citation: str) -> dict:
    """alps_dataset.json as `alps-hf label` would write it for this recipe, with nothing measured.

    The record comes from the labeling stage's own `dataset_info_base` for the recipe's flags, so the
    generator settings and every other recorded value follow the library's declarations.
    """
    from alps_hf.labeling.config import LabelConfig
    from alps_hf.labeling.run import dataset_info_base
    from alps_hf.labeling.writer import dataset_features

    flags = LabelConfig(inputs=[repo_id], output=repo_id.split("/")[-1], sam="facebook/sam-vit-huge",
                        num_clusters=46, pretty_name=pretty_name)
    return {
        **dataset_info_base(flags, source_text),
        "source_citation": citation,
        "num_clusters": flags.num_clusters,
        "feature_normalization": flags.feature_normalization,
        "splits": {flags.split: {"num_rows": None, "files": [], "num_bytes": None}},
        "stats": {},
        "features": dataset_features().to_dict(),
    }


def model_folder(folder: Path) -> Path:
    """The JSON files `alps-hf pretrain` writes for scripts/pretrain_and_publish.sh (no weights)."""
    from transformers import SegformerConfig

    from alps_hf import __version__
    from alps_hf.config_utils import save_config
    from alps_hf.training.config import TrainConfig
    from alps_hf.training.models import DEFAULT_BACKBONES

    k = 46
    id2label = {i: f"cluster_{i:02d}" for i in range(k)}
    config = SegformerConfig(
        depths=[3, 4, 6, 3],
        hidden_sizes=[64, 128, 320, 512],
        decoder_hidden_size=768,
        num_labels=k,
        id2label=id2label,
        label2id={v: i for i, v in id2label.items()},
        architectures=["SegformerForSemanticSegmentation"],
    )
    config.save_pretrained(folder)
    (folder / "id2label.json").write_text(json.dumps({str(i): v for i, v in id2label.items()}))
    train = TrainConfig(
        dataset="alps/isaid-pseudo",
        output="./segformer-b2-isaid-pseudo",
        model="segformer-b2",
        crop_size=512,
        batch_size=8,
        learning_rate=6e-5,
        max_steps=80000,
        eval_split="none",
    )
    save_config(
        train,
        folder / "training_config.json",
        task="pretrain",
        alps_hf_version=__version__,
        architecture="SegformerForSemanticSegmentation",
        base_model=None,
        backbone=DEFAULT_BACKBONES["segformer-b2"],
        num_labels=k,
    )
    return folder


def render_all() -> dict[str, str]:
    """model_cards/<name>/README.md path (relative) -> text."""
    import build_isaid_pseudo as isaid
    import build_potsdam_pseudo as potsdam
    from alps_hf.hub.cards import render_dataset_card, render_model_card

    cards = {}
    for repo_id, pretty, module, citation in [
        ("alps/isaid-pseudo", "iSAID ALPS pseudo-labels", isaid, isaid.ISAID_BIBTEX),
        ("alps/potsdam-pseudo", "Potsdam ALPS pseudo-labels", potsdam, potsdam.POTSDAM_BIBTEX),
    ]:
        info = dataset_info(repo_id, pretty, module.SOURCE_TEXT, citation)
        cards[f"{repo_id.split('/')[1]}/README.md"] = _with_banner(render_dataset_card(info, repo_id=repo_id))
    with tempfile.TemporaryDirectory() as tmp:
        folder = model_folder(Path(tmp))
        card = render_model_card(folder, repo_id="alps/segformer-b2-isaid-pseudo")
        cards["segformer-b2-isaid-pseudo/README.md"] = _with_banner(card)
    return cards


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--check", action="store_true", help="Only compare; exit 1 when a card differs.")
    args = p.parse_args(argv)
    stale = []
    for rel, text in render_all().items():
        path = OUT / rel
        if path.is_file() and path.read_text(encoding="utf-8") == text:
            continue
        stale.append(rel)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    verb = "out of date" if args.check else "written"
    print(f"{len(stale)} card(s) {verb}: {', '.join(stale) or 'none'}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
