"""The atheris harnesses (tests/fuzz/fuzz_parsers.py) run clean for a few thousand inputs each, and
what the fuzzers found stays found.

atheris is a test dependency (``pip install 'atheris>=3.0'``, Linux wheels for CPython 3.11-3.13);
where it is missing these runs are skipped, except in CI (``CI`` set), where that is a failure.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bbreprog_http import ResponseError
from bbreprog_http.protocols import V2, Contract

HARNESS = Path(__file__).parent / "fuzz" / "fuzz_parsers.py"
RUNS = 3000


def require_atheris() -> None:
    if importlib.util.find_spec("atheris") is not None:
        return
    if os.environ.get("CI"):
        pytest.fail("atheris is not installed; the test extra needs it: pip install 'atheris>=3.0'")
    pytest.skip("atheris is not installed (pip install 'atheris>=3.0'); in CI this is a failure")


@pytest.mark.parametrize("target", ["protocols", "structured", "journal"])
def test_the_harness_runs_clean(tmp_path, target):
    require_atheris()
    result = subprocess.run(
        [sys.executable, str(HARNESS), target, f"-runs={RUNS}", "-seed=1", f"-artifact_prefix={tmp_path}/"],
        env={**os.environ, "BBREPROG_FUZZ_TMP": str(tmp_path)}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert f"Done {RUNS} runs" in result.stderr
    assert not list(tmp_path.glob("crash-*"))


def test_the_harness_refuses_an_unknown_target():
    require_atheris()
    result = subprocess.run([sys.executable, str(HARNESS), "nothing"], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "usage:" in result.stderr


# ---- findings: answers the fuzzers built that escaped as something else than a one-sentence
# ResponseError (move them to MALFORMED in tests/test_http_client.py once fixed)
NAMES = ["cat", "dog", "fox"]
FINDINGS = {
    # protocols target, 10 s: `True` passes `isinstance(s, int)`, then numpy refuses it as a dimension
    "a boolean in a V2 shape": (
        Contract("logits", 3), 1, {"outputs": [{"name": "lbels", "datatype": "INT64", "shape": [True], "data": [1]}]},
        "V2._tensor checks numeric shapes with isinstance(s, int), which lets booleans through to reshape: TypeError"),
    # structured target: the same through the label path, with no data at all
    "a boolean in a V2 label shape": (
        Contract("label", 3, labels=NAMES), 2,
        {"outputs": [{"name": "", "datatype": "BOOL", "shape": [False], "data": []}], "": None},
        "V2._tensor checks numeric shapes with isinstance(s, int), which lets booleans through to reshape: TypeError"),
    # structured target: the server's datatype string is put into the message as it came
    "a line break in a V2 datatype": (
        Contract("probs", 3), 1, {"outputs": [{"name": "o", "datatype": "k\n ", "shape": [1, 3], "data": [0.2, 0.3, 0.5]}]},
        "V2._tensor quotes the server's datatype raw: a line break in it makes the message two lines"),
}


@pytest.mark.parametrize("case", list(FINDINGS))
def test_what_the_fuzzers_found_is_a_one_sentence_response_error(case):
    contract, batch, body, _ = FINDINGS[case]
    with pytest.raises(ResponseError) as caught:
        V2("m").decode(body, batch, contract)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("expected"), message
