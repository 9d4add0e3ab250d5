"""Fixtures shared by the GUI tests: the tiny random VLM folder of tests/model is reused, not copied."""
from tests.model.conftest import tiny_omnict_dir, tiny_vlm_dir  # noqa: F401 - re-exported as fixtures
