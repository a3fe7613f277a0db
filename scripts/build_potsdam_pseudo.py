"""Flagship recipe: ISPRS Potsdam RGB tiles -> 512x512 patches -> ALPS pseudo-labels.

    python scripts/build_potsdam_pseudo.py --source ./Potsdam/2_Ortho_RGB --output ./potsdam-pseudo

Patches tile each 6000x6000 scene without overlap, the last row / column moved back to the border
(the windows mmsegmentation's Potsdam converter keeps); pass --overlap for overlapping patches.
Publishes `alps/potsdam-pseudo` with --push. Extra `alps-hf label` flags go after `--`.
"""

from __future__ import annotations

import sys

from pseudo_recipe import parser, run

POTSDAM_BIBTEX = """@misc{isprs_potsdam,
  title        = {{ISPRS} 2D Semantic Labeling Contest -- Potsdam},
  author       = {{International Society for Photogrammetry and Remote Sensing}},
  howpublished = {\\url{https://www.isprs.org/education/benchmarks/UrbanSemLab/2d-sem-label-potsdam.aspx}}
}"""

SOURCE_TEXT = "ISPRS Potsdam true orthophotos (RGB; the ISPRS benchmark terms apply)"


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__.splitlines()[0], "alps/potsdam-pseudo", patch=512, overlap=0).parse_args(argv)
    run(
        args,
        pretty_name="Potsdam ALPS pseudo-labels",
        source_text=SOURCE_TEXT,
        source_citation=POTSDAM_BIBTEX,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
