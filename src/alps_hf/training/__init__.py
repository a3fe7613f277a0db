"""Pre-training, fine-tuning and evaluation of SegFormer / Mask2Former with Accelerate."""
