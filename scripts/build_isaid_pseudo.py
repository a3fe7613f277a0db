"""Flagship recipe: iSAID images -> 896x896 patches (overlap 384, as mmsegmentation) -> ALPS pseudo-labels.

    python scripts/build_isaid_pseudo.py --source ./iSAID/train/images --output ./isaid-pseudo --push
    python scripts/build_isaid_pseudo.py --source <hub dataset id> --split train --output ./isaid-pseudo

Publishes `alps/isaid-pseudo` with --push (log in first: `hf auth login`). Extra `alps-hf label`
flags go after `--`, e.g. `-- --image-batch-size 8 --resume`.
"""

from __future__ import annotations

import sys

from pseudo_recipe import parser, run

ISAID_BIBTEX = """@inproceedings{waqas2019isaid,
  title     = {iSAID: A Large-scale Dataset for Instance Segmentation in Aerial Images},
  author    = {Waqas Zamir, Syed and Arora, Aditya and Gupta, Akshita and Khan, Salman and Sun, Guolei and Shahbaz Khan, Fahad and Zhu, Fan and Shao, Ling and Xia, Gui-Song and Bai, Xiang},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition Workshops},
  year      = {2019}
}
@inproceedings{xia2018dota,
  title     = {DOTA: A Large-scale Dataset for Object Detection in Aerial Images},
  author    = {Xia, Gui-Song and Bai, Xiang and Ding, Jian and Zhu, Zhen and Belongie, Serge and Luo, Jiebo and Datcu, Mihai and Pelillo, Marcello and Zhang, Liangpei},
  booktitle = {Proceedings of the IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2018}
}"""

SOURCE_TEXT = "iSAID images (the DOTA-v1.0 aerial images; their terms of use apply), cut as mmsegmentation's iSAID converter does"


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__.splitlines()[0], "alps/isaid-pseudo", patch=896, overlap=384).parse_args(argv)
    run(args, pretty_name="iSAID ALPS pseudo-labels", source_text=SOURCE_TEXT, source_citation=ISAID_BIBTEX)
    return 0


if __name__ == "__main__":
    sys.exit(main())
