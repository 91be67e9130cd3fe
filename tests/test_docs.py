"""The reference page is generated from the code and must be up to date."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_reference_page_is_up_to_date():
    spec = importlib.util.spec_from_file_location("make_reference", ROOT / "docs" / "make_reference.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    committed = (ROOT / "docs" / "reference.md").read_text()
    assert committed == mod.render(), "run: python docs/make_reference.py"
