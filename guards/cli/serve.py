"""`python -m harmlens.guards serve GUARD`: the guarded model behind an OpenAI-compatible HTTP API."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from harmlens.cli import device_arg, nonneg_int, positive_int, user_text
from harmlens.errors import HarmlensError

_KEY_ENV = "HARMLENS_API_KEY"


def add_command(subparsers) -> None:
    """Add the `serve` subcommand."""
    p = subparsers.add_parser(
        "serve",
        help="serve the guarded model over an OpenAI-compatible HTTP API",
        description="Serve /v1/chat/completions (guarded generation from the same prefill), /v1/moderations, "
        "/v1/models and /health. Binds 127.0.0.1 unless --host says otherwise.",
    )
    p.add_argument("guard", type=Path, help="guard file written by `fit`")
    p.add_argument("--model", default=None, help="Hub name or local HF folder (default: the guard file's model)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=nonneg_int, default=8000, help="port to listen on (default 8000)")
    p.add_argument("--api-key", default=None, help=f"require 'Authorization: Bearer KEY' on /v1/* (or ${_KEY_ENV})")
    p.add_argument("--fail-open", action="store_true", help="internal errors let requests through (default: refuse)")
    p.add_argument("--served-name", default=None, help="model name clients use (default: the model's name)")
    p.add_argument(
        "--refusal", type=user_text, default=None, help="reply to flagged requests (default: a short apology)"
    )
    p.add_argument("--max-batch", type=positive_int, default=16, help="requests per batch (default 16)")
    p.add_argument("--wait-ms", type=float, default=5.0, help="how long a batch waits for more requests (default 5)")
    p.add_argument("--max-queue", type=positive_int, default=256, help="queued requests before new ones get a 429")
    p.add_argument("--max-tokens", type=positive_int, default=512, help="largest max_tokens a request may ask for")
    p.add_argument(
        "--max-message-chars", type=positive_int, default=65536, help="longest message accepted (characters)"
    )
    p.add_argument("--device", type=device_arg, default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--unguarded", action="store_true", help="benchmark baseline: generate without reading the guard")
    p.add_argument(
        "--backend",
        choices=("hf", "vllm"),
        default="hf",
        help="hf (default): this server; vllm: vLLM's own OpenAI server with the guard plugin (docs/vllm_plugin.md)",
    )
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    """Load the model and guard (refusing a guard fitted on another model), then serve until interrupted; with
    --backend vllm, run vLLM's own server with the guard plugin instead (guards/vllm_guard/launch.py)."""
    if not 0 < args.port < 65536 or min(args.max_batch, args.max_tokens, args.max_queue) < 1 or args.wait_ms < 0:
        raise HarmlensError("--port, --max-batch, --max-tokens, --max-queue must be positive, --wait-ms not negative")
    if args.backend == "vllm":  # vLLM's own server with the guard as a plugin; the Python API is VLLMGuardedModel
        from harmlens.guards.vllm_guard.launch import serve_vllm

        return serve_vllm(args)
    try:
        import uvicorn

        from harmlens.guards.serve import Batcher, Limits, create_app
    except ImportError as exc:
        raise HarmlensError(
            f"serve needs the 'serve' extra: pip install 'harmlens[serve]' ({exc.name} missing)"
        ) from None
    from harmlens.guards.latent.guard import LatentGuard
    from harmlens.guards.latent.guard_file import read_guard_file
    from harmlens.guards.latent.guarded import DEFAULT_REFUSAL, GuardedModel
    from harmlens.io import model_name
    from harmlens.runtime import load_model

    if not args.guard.is_file():
        raise HarmlensError(f"guard file not found: {args.guard}")
    try:
        tensors, meta, _ = read_guard_file(args.guard)  # a malformed file is refused before the model loads
    except HarmlensError as exc:
        raise HarmlensError(f"refusing to serve: {exc}") from None
    model = load_model(args.model or meta.get("model"), device=args.device)
    try:
        guard = LatentGuard(tensors, meta, model, fail_closed=not args.fail_open)
    except HarmlensError as exc:
        raise HarmlensError(f"refusing to serve: the guard does not belong to this model: {exc}") from None
    guarded = GuardedModel(model, guard, refusal=args.refusal or DEFAULT_REFUSAL)
    batcher = Batcher(
        guarded,
        guarded_replies=not args.unguarded,
        max_batch=args.max_batch,
        wait_ms=args.wait_ms,
        max_queue=args.max_queue,
    )
    vlm = getattr(guarded, "processor", None) is not None  # image_url parts: one per request
    limits = Limits(max_message_chars=args.max_message_chars, max_tokens=args.max_tokens, max_images=int(vlm))
    served = args.served_name or model_name(model)
    app = create_app(batcher, served, api_key=args.api_key or os.environ.get(_KEY_ENV) or None, limits=limits)
    mode = "UNGUARDED (baseline)" if args.unguarded else f"guarded by {args.guard.name}"
    mode += ", images on" if vlm else ""
    closed = "fail-open" if args.fail_open else "fail-closed"
    print(f"serving {served!r} {mode} ({closed}) on http://{args.host}:{args.port}", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0
