"""The model zoo: ONNX export fidelity, metadata, caching, tamper detection, checksums."""
from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from blackbox_reprog import zoo
from blackbox_reprog.zoo import build

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory):
    """A private cache for this file; both models are built once, on first use."""
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("bbreprog-cache")
        mp.setenv("BBREPROG_CACHE", str(path))
        yield path


def run_onnx(path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"input": x})[0]


def sine_frames(freqs, amplitude=0.5) -> np.ndarray:
    t = np.arange(1024) / 16000
    return np.stack([amplitude * np.sin(2 * math.pi * f * t) for f in freqs]).astype(np.float32)


def sample_images() -> np.ndarray:
    """sklearn's china.jpg and flower.jpg, short side to 256, centre crop 224, in [0, 1]."""
    from PIL import Image
    from sklearn.datasets import load_sample_image
    out = []
    for name in ("china.jpg", "flower.jpg"):
        im = Image.fromarray(load_sample_image(name))
        scale = 256 / min(im.size)
        im = im.resize((round(im.width * scale), round(im.height * scale)), Image.BICUBIC)
        left, top = (im.width - 224) // 2, (im.height - 224) // 2
        im = im.crop((left, top, left + 224, top + 224))
        out.append(np.asarray(im, np.float32).transpose(2, 0, 1) / 255)   # (3, 224, 224)
    return np.stack(out)


def test_crepe_onnx_matches_torch_and_finds_the_pitch():
    freqs = [110.0, 220.0, 440.0, 880.0]
    noise = np.random.default_rng(1).uniform(-1, 1, (2, 1024)).astype(np.float32)
    x = np.concatenate([sine_frames(freqs), noise])                        # (6, 1024)
    got = run_onnx(zoo.model_path("crepe-tiny"), x)
    with torch.no_grad():
        want = zoo.torch_model("crepe-tiny")(torch.from_numpy(x)).numpy()
    assert got.shape == (6, 360)
    assert np.abs(got - want).max() < 1e-3
    assert np.array_equal(got.argmax(1), want.argmax(1))
    # bin b is 20*b + 1997.38 cents above 10 Hz: each sine lands within one bin of its pitch
    cents = 1200 * np.log2(np.array(freqs) / 10)
    assert np.all(np.abs(got[:4].argmax(1) - (cents - 1997.3794) / 20) <= 1.0)


def test_crepe_normalises_frames_inside():
    x = sine_frames([440.0])
    model = zoo.torch_model("crepe-tiny")
    assert not model.training
    with torch.no_grad():
        a = model(torch.from_numpy(x))
        b = model(torch.from_numpy(3 * x + 0.2))    # same frame, other gain and offset
    assert torch.allclose(a, b, atol=1e-4)


def test_efficientnet_onnx_matches_torch_and_recognises_images():
    noise = np.random.default_rng(2).uniform(0, 1, (2, 3, 224, 224)).astype(np.float32)
    x = np.concatenate([sample_images(), noise])                           # (4, 3, 224, 224)
    got = run_onnx(zoo.model_path("efficientnet-lite0"), x)
    with torch.no_grad():
        want = zoo.torch_model("efficientnet-lite0")(torch.from_numpy(x)).numpy()
    assert got.shape == (4, 1000)
    assert np.abs(got - want).max() < 1e-3
    assert np.array_equal(got.argmax(1), want.argmax(1))
    assert got[0].argmax() == 698          # china.jpg: palace
    assert got[1].argmax() == 985          # flower.jpg: daisy



def test_efficientnet_at_128_px_is_the_same_network_and_still_sees_images():
    import torch.nn.functional as F
    x = F.interpolate(torch.from_numpy(sample_images()), size=128, mode="bilinear", antialias=True,
                      align_corners=False).numpy()                         # (2, 3, 128, 128)
    got = run_onnx(zoo.model_path("efficientnet-lite0-128"), x)
    with torch.no_grad():
        want = zoo.torch_model("efficientnet-lite0-128")(torch.from_numpy(x)).numpy()
        full = zoo.torch_model("efficientnet-lite0")
    assert np.abs(got - want).max() < 1e-3
    assert {n: p.shape for n, p in full.state_dict().items()} == \
        {n: p.shape for n, p in zoo.torch_model("efficientnet-lite0-128").state_dict().items()}
    top3 = np.argsort(-got, axis=1)[:, :3]
    assert {442, 663} <= set(top3[0])      # china.jpg: bell cote, monastery (stupa first at 128 px)
    assert 985 in top3[1]                  # flower.jpg: daisy among the first three

def test_batch_axis_is_dynamic():
    assert run_onnx(zoo.model_path("crepe-tiny"), sine_frames([300.0])).shape == (1, 360)
    assert run_onnx(zoo.model_path("crepe-tiny"), sine_frames([300.0] * 7)).shape == (7, 360)


@pytest.mark.parametrize("name,value_range", [("crepe-tiny", "-10,10"),
                                              ("efficientnet-lite0", "0,1"), ("efficientnet-lite0-128", "0,1")])
def test_metadata(name, value_range):
    proto = onnx.load(str(zoo.model_path(name)), load_external_data=False)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["bbreprog.name"] == name
    assert meta["bbreprog.output_kind"] == "logits"
    assert meta["bbreprog.value_range"] == value_range
    licence = {"crepe-tiny": "MIT"}.get(name, "Apache-2.0")
    assert licence in meta["bbreprog.source"]
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17


def test_cached_file_is_reused(cache):
    path = zoo.model_path("crepe-tiny")
    assert path == cache / "models" / "crepe-tiny.onnx"
    sidecar = path.with_name("crepe-tiny.onnx.sha256")
    assert sidecar.read_text().split()[0] == build.sha256_file(path)
    before = path.stat().st_mtime_ns, sidecar.stat().st_mtime_ns
    assert zoo.model_path("crepe-tiny") == path
    assert (path.stat().st_mtime_ns, sidecar.stat().st_mtime_ns) == before


def test_tampered_or_unsigned_file_is_rebuilt():
    path = zoo.model_path("crepe-tiny")
    good = path.read_bytes()
    tampered = bytearray(good)
    tampered[len(tampered) // 2] ^= 0xFF                   # flip one byte inside the weights
    path.write_bytes(bytes(tampered))
    assert not build.is_cached(path)
    assert zoo.model_path("crepe-tiny") == path
    assert path.read_bytes() == good                       # export is deterministic
    path.with_name("crepe-tiny.onnx.sha256").unlink()      # a missing sidecar also rebuilds
    assert not build.is_cached(path)
    zoo.model_path("crepe-tiny")
    assert build.is_cached(path)


def test_wrong_source_checksum_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("BBREPROG_CACHE", str(tmp_path))     # empty cache: forces a build
    monkeypatch.setitem(build.PINNED_SHA256, "crepe-tiny", "0" * 64)
    actual = build.sha256_file(build.ARCHITECTURES["crepe-tiny"][0].weights_path())
    with pytest.raises(build.ChecksumError) as err:
        zoo.model_path("crepe-tiny")
    message = str(err.value)
    assert message.startswith("expected the weights file ") and f"sha256 {'0' * 64}, got {actual}" in message
    assert message.count(". ") == 0 and "\n" not in message   # one sentence
    assert not (tmp_path / "models" / "crepe-tiny.onnx").exists()
    with pytest.raises(build.ChecksumError):
        zoo.torch_model("crepe-tiny")


def test_wrong_source_checksum_is_one_line_exit_2_from_the_cli(monkeypatch, tmp_path):
    from click.testing import CliRunner
    from blackbox_reprog.tools.cli import main
    monkeypatch.setenv("BBREPROG_CACHE", str(tmp_path))
    monkeypatch.setitem(build.PINNED_SHA256, "crepe-tiny", "0" * 64)
    result = CliRunner().invoke(main, ["demo", "--quiet", "--out", str(tmp_path / "runs")], catch_exceptions=False)
    assert result.exit_code == 2 and result.stderr.startswith("error: expected the weights file ")
    assert result.stderr.count("\n") == 1 and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_a_misspelt_zoo_name_is_refused_with_the_close_name(backend, tmp_path):
    from click.testing import CliRunner
    from blackbox_reprog.tools.cli import main
    result = CliRunner().invoke(main, ["demo", "--quiet", "--out", str(tmp_path), "--set", f"backend.name={backend}",
                                       "--set", "backend.model=crepe-tiyn"], catch_exceptions=False)
    assert result.exit_code == 2
    assert result.stderr.startswith("error: expected ") and result.stderr.endswith(
        "'crepe-tiyn', which is neither (did you mean 'crepe-tiny'? `bbreprog models` describes the models)\n"
        if backend == "onnx" else "'crepe-tiyn' (did you mean 'crepe-tiny'? `bbreprog models` describes the models)\n")


def test_verification_catches_a_mismatch():
    zm = zoo.zoo_model("crepe-tiny")
    model = zoo.torch_model("crepe-tiny")
    x = build.verification_inputs(zm)

    class Shifted(torch.nn.Module):
        def forward(self, x):
            return model(x) + 0.01

    assert build.compare(zoo.model_path("crepe-tiny"), model, x) < 1e-3
    with pytest.raises(build.VerificationError, match="max abs diff"):
        build.compare(zoo.model_path("crepe-tiny"), Shifted(), x)


def test_registry_and_unknown_name():
    assert zoo.zoo_names() == ["crepe-tiny", "efficientnet-lite0", "efficientnet-lite0-128"]
    assert zoo.zoo_model("crepe-tiny").input_shape == (1024,)
    assert zoo.zoo_model("efficientnet-lite0").num_classes == 1000
    with pytest.raises(ValueError) as err:
        zoo.zoo_model("x")
    assert str(err.value) == ("unknown model 'x'; expected one of: crepe-tiny, efficientnet-lite0, efficientnet-lite0-128 "
                              "(`bbreprog models` describes them)")
    with pytest.raises(ValueError):
        zoo.model_path("resnet")


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("BBREPROG_CACHE", str(tmp_path / "a"))
    assert build.cache_dir() == tmp_path / "a"
    monkeypatch.delenv("BBREPROG_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert build.cache_dir() == tmp_path / "xdg" / "blackbox-reprog"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert build.cache_dir() == tmp_path / "home" / ".cache" / "blackbox-reprog"


def test_no_onnx_import_at_module_level():
    code = ("import sys, blackbox_reprog.zoo, blackbox_reprog.zoo.build; "
            "print('onnx' in sys.modules, 'onnxruntime' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.stdout.split() == ["False", "False"]


def test_module_help_explains_and_builds_nothing(tmp_path):
    env = {**os.environ, "BBREPROG_CACHE": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-m", "blackbox_reprog.zoo", "--help"], capture_output=True,
                         text=True, env=env, timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("usage: python -m blackbox_reprog.zoo")
    assert not (tmp_path / "cache").exists()
