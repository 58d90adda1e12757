"""The README's Python example runs as written."""
import re
from pathlib import Path

import pytest


@pytest.mark.slow
def test_readme_python_example_runs(tmp_path, monkeypatch):
    text = (Path(__file__).parents[1] / "README.md").read_text()
    example = re.findall(r"```python\n(.*?)```", text, re.S)[0]
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(example, "README.md", "exec"), namespace)
    result = namespace["result"]
    assert result["budgeted_queries"] <= 20_000 and result["data"]["name"] == "Coffee"
    assert (tmp_path / "runs" / "Coffee-blackbox-s0" / "result.json").is_file()
