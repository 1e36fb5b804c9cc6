"""The README's Python tour runs as written."""
import importlib.util
import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_tour_runs(tmp_path, monkeypatch):
    if not README.exists():
        pytest.skip("README.md is not beside the tests (installed package)")
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks
    monkeypatch.chdir(tmp_path)           # it writes run.safetensors and net.safetensors
    namespace = {}
    for block in blocks:
        if "import torch" in block and importlib.util.find_spec("torch") is None:
            continue                      # PyTorch is optional: its block needs it
        exec(compile(block, str(README), "exec"), namespace)
    assert round(float(namespace["db2"][0]), 1) == -15.7
    assert namespace["history"].val_accuracy[-1] >= 0.95
    digits = namespace["digits"]
    assert namespace["clf"].score(digits.X_test, digits.y_test) >= 0.95
