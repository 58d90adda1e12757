"""``python -m blackbox_reprog.zoo``: build every zoo model, one line per model."""
from __future__ import annotations

import argparse

from . import build, model_path, torch_model, zoo_model, zoo_names


def main(argv: list[str] | None = None) -> None:
    # parsed only so that --help explains instead of starting a build of several minutes
    argparse.ArgumentParser(prog="python -m blackbox_reprog.zoo", description=(
        "Build (or find in the cache) every zoo model, check each against its torch original, "
        "and print one line per model: name, path, sha256 and the largest output difference.")).parse_args(argv)
    for name in zoo_names():
        path = model_path(name)
        # re-check the (possibly cached) file against torch so the line reports a real number
        zm = zoo_model(name)
        diff = build.compare(path, torch_model(name), build.verification_inputs(zm))
        sha = build.sha256_file(path)
        print(f"{name}  {path}  sha256 {sha[:12]}  max abs diff {diff:.2e}")


if __name__ == "__main__":
    main()
