"""Tiny random models of every SAM family, built from configs and saved with save_pretrained.

Nothing is downloaded. SAM-HQ, SAM 2, EdgeTAM take 128 px inputs (8 x 8 embedding, 32 x 32 low-res
masks), the SAM 3 tracker 112 px (patch 14: 8 x 8). The square families' processor configs are written as
JSON by hand: their transformers classes need torchvision. SAM 2's goes into `preprocessor_config.json`
(transformers 4 layout), the others' into `processor_config.json` under `image_processor` (transformers 5).
EdgeTAM's RepViT encoder runs through timm: `edgetam` fixtures skip without it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sam_fixtures import TINY_CHANNELS, TINY_INPUT, tiny_sam_config, tiny_sam_processor

SAM3_INPUT = 112
FAMILY_NAMES = ("sam", "sam_hq", "sam2", "edgetam", "sam3_tracker")
_DECODER = {"hidden_size": TINY_CHANNELS, "mlp_dim": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
            "iou_head_hidden_dim": 32}


def _prompt(size: int, patch: int) -> dict:
    return {"hidden_size": TINY_CHANNELS, "image_size": size, "patch_size": patch, "mask_input_channels": 4}


def _fpn_sizes(size: int, stride: int) -> list[list[int]]:
    return [[size * 4 // stride, size * 4 // stride], [size * 2 // stride, size * 2 // stride],
            [size // stride, size // stride]]


def tiny_config(family: str):
    """A tiny config of `family` (random weights come from the model class)."""
    import transformers

    if family == "sam":
        return tiny_sam_config()
    if family == "sam_hq":
        vision = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": TINY_INPUT,
                  "patch_size": 16, "output_channels": TINY_CHANNELS, "mlp_dim": 64, "window_size": 4,
                  "global_attn_indexes": [1], "num_pos_feats": 16}
        return transformers.SamHQConfig(vision_config=vision, prompt_encoder_config=_prompt(TINY_INPUT, 16),
                                        mask_decoder_config={**_DECODER, "vit_dim": 32})
    if family == "sam2":
        hiera = {"model_type": "sam2_hiera_det_model", "hidden_size": 16, "num_attention_heads": 1,
                 "image_size": [TINY_INPUT, TINY_INPUT], "blocks_per_stage": [1, 1, 2, 1],
                 "embed_dim_per_stage": [16, 32, 64, 128], "num_attention_heads_per_stage": [1, 1, 1, 1],
                 "window_size_per_stage": [4, 4, 4, 4], "global_attention_blocks": [3],
                 "window_positional_embedding_background_size": [4, 4]}
        vision = {"model_type": "sam2_vision_model", "backbone_config": hiera,
                  "backbone_channel_list": [128, 64, 32, 16], "backbone_feature_sizes": _fpn_sizes(TINY_INPUT, 16),
                  "fpn_hidden_size": TINY_CHANNELS}
        return transformers.Sam2Config(vision_config=vision, prompt_encoder_config=_prompt(TINY_INPUT, 16),
                                       mask_decoder_config=_DECODER)
    if family == "edgetam":
        timm = {"model_type": "timm_wrapper", "architecture": "repvit_m1", "num_classes": 2,
                "model_args": {"in_chans": 3, "features_only": True, "out_indices": [0, 1, 2, 3],
                               "embed_dim": [8, 16, 32, 64], "depth": [1, 1, 1, 1]}}
        vision = {"model_type": "edgetam_vision_model", "backbone_config": timm,
                  "backbone_channel_list": [64, 32, 16, 8], "backbone_feature_sizes": _fpn_sizes(TINY_INPUT, 16),
                  "fpn_hidden_size": TINY_CHANNELS}
        return transformers.EdgeTamConfig(vision_config=vision, prompt_encoder_config=_prompt(TINY_INPUT, 16),
                                          mask_decoder_config=_DECODER)
    if family == "sam3_tracker":
        vit = {"model_type": "sam3_vit_model", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
               "num_attention_heads": 2, "image_size": SAM3_INPUT, "patch_size": 14, "window_size": 4,
               "global_attn_indexes": [1], "pretrain_image_size": 56}
        vision = {"model_type": "sam3_vision_model", "backbone_config": vit, "fpn_hidden_size": TINY_CHANNELS,
                  "backbone_feature_sizes": _fpn_sizes(SAM3_INPUT, 14)}
        return transformers.Sam3TrackerConfig(vision_config=vision, prompt_encoder_config=_prompt(SAM3_INPUT, 14),
                                              mask_decoder_config=_DECODER)
    raise ValueError(family)


def input_size(family: str) -> int:
    return SAM3_INPUT if family == "sam3_tracker" else TINY_INPUT


MODEL_CLASSES = {"sam": "SamModel", "sam_hq": "SamHQModel", "sam2": "Sam2Model", "edgetam": "EdgeTamModel",
                 "sam3_tracker": "Sam3TrackerModel"}


def skip_without_requirements(family: str) -> None:
    if family == "edgetam":
        pytest.importorskip("timm", reason="EdgeTAM's image encoder needs timm (pip install 'alps_hf[edgetam]')")


def tiny_model(family: str, seed: int = 0):
    import torch
    import transformers

    skip_without_requirements(family)
    torch.manual_seed(seed)
    return getattr(transformers, MODEL_CLASSES[family])(tiny_config(family)).eval()


def processor_dict(family: str) -> dict:
    """What the family's image processor would save (SAM 2 / SAM 3 values at the tiny input size)."""
    side = input_size(family)
    mean, std = ([0.5] * 3, [0.5] * 3) if family == "sam3_tracker" else ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    cls = "Sam3ImageProcessor" if family == "sam3_tracker" else "Sam2ImageProcessor"
    return {"image_processor_type": cls, "do_convert_rgb": True, "do_normalize": True, "do_rescale": True,
            "do_resize": True, "image_mean": mean, "image_std": std, "rescale_factor": 1 / 255, "resample": 2,
            "size": {"height": side, "width": side}, "mask_size": {"height": side // 4, "width": side // 4}}


def tiny_processor(family: str):
    from alps_hf.sam.families import SquarePreprocessor

    if family in ("sam", "sam_hq"):
        return tiny_sam_processor()
    return SquarePreprocessor.from_dict(processor_dict(family), family)


def save_tiny_family(family: str, folder: Path) -> Path:
    """A tiny random model of `family` with its processor config, in the save_pretrained layout."""
    tiny_model(family).save_pretrained(folder)
    if family in ("sam", "sam_hq"):
        tiny_sam_processor().save_pretrained(folder)
    elif family == "sam2":
        (folder / "preprocessor_config.json").write_text(json.dumps(processor_dict(family), indent=2))
    else:
        (folder / "processor_config.json").write_text(json.dumps({"image_processor": processor_dict(family)}, indent=2))
    return folder
