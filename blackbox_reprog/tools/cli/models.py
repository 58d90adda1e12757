"""Models: the installed backends, and serving a model behind a metered local API."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ...errors import Refusal
from .common import fail, main


@main.command()
def backends():
    """List the installed backend plugins."""
    from ...backends.registry import describe_installed
    rows = describe_installed()
    if not rows:
        click.echo("no backend plugins installed")
    for row in rows:
        click.echo(f"{row['name']:<10} {row['status']:<4} {row['target']:<40} {row['description']}")


def _backend_options(pairs: tuple[str, ...]) -> dict:
    """--option KEY=VALUE pairs; values are TOML scalars or lists, bare words are strings."""
    import tomllib
    options = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            fail(f"expected --option KEY=VALUE, got {pair!r}")
        try:
            options[key.strip()] = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            options[key.strip()] = raw.strip()
    return options


@main.command()
@click.argument("model")
@click.option("--backend", "backend_name", default="onnx", show_default=True,
              help="Backend plugin that loads MODEL (see `bbreprog backends`).")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE",
              help="A backend option, e.g. --option threads=2 (values are TOML).")
@click.option("--name", help="Model name in the URLs [MODEL's file stem].")
@click.option("--port", type=int, default=8500, show_default=True, help="Port on 127.0.0.1; 0 picks a free one.")
@click.option("--output", type=click.Choice(["probs", "topk", "label"]),
              help="Answer less than the model gives, like a stingier API.")
@click.option("--k", type=int, default=5, show_default=True, help="Labels answered with --output topk.")
@click.option("--api-key-env", metavar="VAR",
              help="Require the API key held in environment variable VAR (the key itself is never an argument).")
@click.option("--key-header", default="Authorization", show_default=True,
              help="Header carrying the key; Authorization means 'Bearer <key>'.")
@click.option("--latency", type=float, default=0.0, show_default=True, help="Seconds added to every answer.")
@click.option("--fault-rate", type=float, default=0.0, show_default=True,
              help="Probability that a billed request meets a fault.")
@click.option("--faults", default="429,500,timeout", show_default=True,
              help="Faults to draw from: 429, 500, timeout, malformed.")
@click.option("--timeout-delay", type=float, default=2.0, show_default=True,
              help="Seconds a timeout fault waits before answering.")
@click.option("--retry-after", type=float, default=0.0, show_default=True,
              help="Seconds a 429 asks the client to wait.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the fault draws.")
@click.option("--fp64", is_flag=True, help="Label V2 scores FP64, as some servers do.")
@click.option("--idempotent", is_flag=True, help="Bill each Idempotency-Key once; resends get the stored answer.")
@click.option("--billing-file", type=click.Path(dir_okay=False), help="Write the final bill here as JSON.")
def serve(model, backend_name, options, name, port, output, k, api_key_env, key_header, latency,
          fault_rate, faults, timeout_delay, retry_after, seed, fp64, idempotent, billing_file):
    """Serve MODEL on 127.0.0.1 over the V2 (KServe), TF-Serving and MLflow protocols, billing
    every query, to try the remote path end to end. Stop with Ctrl-C or SIGTERM: the bill is
    printed as one JSON line."""
    import os
    import signal

    from ...files import atomic_write
    from ...backends.registry import create_backend
    from ...serve import ModelServer

    api_key = None
    if api_key_env:
        api_key = os.environ.get(api_key_env)
        if not api_key:
            fail(f"expected environment variable {api_key_env} to hold the API key, got it "
                  f"{'empty' if api_key == '' else 'unset'}")
    backend_options = _backend_options(options)
    try:
        backend = create_backend(backend_name, model, **backend_options)
    except Refusal as error:
        fail(str(error))
    try:
        server = ModelServer(
            backend, name=name or Path(model).stem, port=port, api_key=api_key, key_header=key_header,
            output=output or "", k=k, latency=latency, fault_rate=fault_rate,
            faults=tuple(f.strip() for f in faults.split(",") if f.strip()), timeout_delay=timeout_delay,
            retry_after=retry_after, seed=seed, fp64=fp64, idempotent=idempotent,
            log=lambda line: click.echo(line, err=True))
    except Refusal as error:
        backend.close()
        fail(str(error))
    except OSError as error:
        backend.close()
        fail(f"expected a free port on 127.0.0.1, got {port} ({error.strerror or error})")

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)        # even when started in the background, which ignores it
    n = server.name
    click.echo(f"serving {n} on {server.url} (V2: /v2/models/{n}/infer, TF-Serving: /v1/models/{n}:predict, "
               f"MLflow: /invocations)")
    sys.stdout.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)         # a second signal must not cut the bill short
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        server.stop()
        backend.close()
    bill = server.billing()
    click.echo(json.dumps(bill))
    if billing_file:
        atomic_write(Path(billing_file), (json.dumps(bill, indent=2) + "\n").encode())
