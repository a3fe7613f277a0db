"""Dataset and model cards, and publishing folders to the Hugging Face Hub."""
