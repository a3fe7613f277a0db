"""alps_hf: ALPS (arXiv 2406.10855) the Hugging Face way.

SAM masks -> masked-average SAM features -> online K-means -> pseudo-label maps -> a `datasets`
dataset on the Hub -> SegFormer / Mask2Former pre-training with Accelerate.
"""

__version__ = "0.1.0"
