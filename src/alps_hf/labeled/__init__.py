"""Ground-truth labeled data: images/ + labels/ folder pairs and the Hub-layout datasets made from them.

`pairs` matches an images folder with a labels folder by file stem and reads class-index or
palette (RGB) masks; `make_dataset` writes such a pair as a labeled dataset folder that
`alps-hf finetune` / `evaluate` and `load_dataset(folder)` take as it is.
Sits above `hub` (it renders a card) and below `labeling` / `training`, which may import it.
"""
