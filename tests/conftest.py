import pytest

from incentivize.models import load


@pytest.fixture(scope="session")
def tiny():
    """The 2-layer random Llama with the real SmolLM2 tokenizer, loaded once per session."""
    return load("tiny-random")


@pytest.fixture(scope="session")
def fixtures_dir():
    from pathlib import Path

    return Path(__file__).parent / "fixtures"
