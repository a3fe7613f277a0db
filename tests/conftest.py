"""Test setup: everything offline, before any Hugging Face import."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_EVALUATE_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared is not beside the checkout")
    return SHARED


@pytest.fixture(scope="session")
def dubai_dir(shared_dir) -> Path:
    return shared_dir / "data" / "dubai_aerial"


@pytest.fixture(scope="session")
def toy_sam_dir(shared_dir) -> Path:
    return shared_dir / "models" / "toy-sam"


@pytest.fixture(scope="session")
def scenes_dir(shared_dir) -> Path:
    return shared_dir / "data" / "synthetic_scenes"


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module: tiny models run fastest on one thread (two spin far slower on a busy
    2-core machine), and subprocess runs under `accelerate launch` get OMP_NUM_THREADS=1, so in-process
    runs compared with them must match it (float reductions can differ in the last bit between thread
    counts). Use with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_sam_dir(tmp_path_factory) -> Path:
    """A tiny random SAM (tests/sam_fixtures.py) saved with save_pretrained, with its image processor."""
    from sam_fixtures import save_tiny_sam

    return save_tiny_sam(tmp_path_factory.mktemp("tiny-sam"))


@pytest.fixture
def no_sam(monkeypatch):
    """Make any attempt to load SAM weights fail the test; yields the list of attempts."""
    import transformers

    from alps_hf.sam.generator import MaskGenerator

    calls = []

    def refuse(cls, *args, **kwargs):
        calls.append(args)
        raise AssertionError(f"SAM must not be loaded here ({cls.__name__}.from_pretrained{args})")

    monkeypatch.setattr(MaskGenerator, "from_pretrained", classmethod(refuse))
    monkeypatch.setattr(transformers.SamModel, "from_pretrained", classmethod(refuse))
    yield calls
    assert calls == []


@pytest.fixture
def count_generated(monkeypatch):
    """Count the images that go through MaskGenerator.generate."""
    from alps_hf.sam.generator import MaskGenerator

    seen: list[tuple[int, int]] = []
    original = MaskGenerator.generate

    def spy(self, images):
        seen.extend(img.shape[:2] for img in images)
        return original(self, images)

    monkeypatch.setattr(MaskGenerator, "generate", spy)
    return seen
