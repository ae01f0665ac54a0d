"""vLLM worker extension: copy a prefill read's rows out of vLLM's own prefill (no second forward, no second model).

Loaded inside vLLM's engine process via `LLM(worker_extension_cls=EXTENSION)` (VLLMBackend(model, reads=True)); hooks
are installed by `hl_install` (RPC) after the weights load, so the engine must run eagerly (enforce_eager: hooks cannot
enter a compiled graph; a hook that never fires leaves no rows and the reader is told so). A request asks for positions
through `SamplingParams.extra_args["harmlens_read"]`; requests without it cost one dict lookup per step. This module
imports only torch: it runs inside vLLM's worker process.
"""

from __future__ import annotations

from typing import Any

import torch

READ_KEY = "harmlens_read"
EXTENSION = "harmlens.runtime.vllm_worker.ReadWorkerExtension"


def _embed_and_layers(model: torch.nn.Module) -> tuple[Any, Any]:
    """vLLM's decoder (embed_tokens, layers) under the causal-LM wrapper."""
    inner: Any = getattr(model, "model", model)
    if not hasattr(inner, "layers") or not hasattr(inner, "embed_tokens"):
        raise RuntimeError(f"{type(model).__name__}: no model.layers / model.embed_tokens to read the residual from")
    return inner.embed_tokens, inner.layers


class ReadWorkerExtension:
    """Mixed into vLLM's Worker: per-request residual rows at the requested positions of the installed layers."""

    model_runner: Any

    def hl_install(self, layers: list[int]) -> int:
        """Hook resid_pre of each layer (layer 0: the embedding; L: the output of decoder layer L-1); returns hooks."""
        for handle in getattr(self, "_hl_handles", []):
            handle.remove()
        model = self.model_runner.model
        embed, blocks = _embed_and_layers(model)
        self._hl_layers = list(dict.fromkeys(int(x) for x in layers))
        self._hl_wants: dict[str, set[int]] = {}  # req_id -> positions still to capture
        self._hl_seen: set[str] = set()
        self._hl_rows: dict[str, dict[tuple[int, int], torch.Tensor]] = {}  # req_id -> (layer, pos) -> row
        self._hl_plan: list[tuple[str, torch.Tensor, list[int]]] = []
        self._hl_handles = [model.register_forward_pre_hook(self._hl_prepare, with_kwargs=True)]
        for layer in self._hl_layers:
            module = embed if layer == 0 else blocks[layer - 1]
            self._hl_handles.append(module.register_forward_hook(self._hl_hook(layer, fused=layer > 0)))
        return len(self._hl_handles)

    def _hl_prepare(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        """Once per forward: which rows of this step hold positions a reading request still wants."""
        self._hl_plan = []
        runner = self.model_runner
        req_ids = list(runner.input_batch.req_ids)[: runner.input_batch.num_reqs]
        self._hl_seen.intersection_update(req_ids)  # forget requests that left the batch (finished or aborted)
        for rid in req_ids:
            if rid not in self._hl_seen:
                self._hl_seen.add(rid)
                state = runner.requests.get(rid)
                extra = getattr(getattr(state, "sampling_params", None), "extra_args", None) or {}
                if READ_KEY in extra and rid not in self._hl_rows:
                    self._hl_wants[rid] = {int(p) for p in extra[READ_KEY]}
                    self._hl_rows[rid] = {}
        if not any(rid in self._hl_wants for rid in req_ids):
            return None
        positions = kwargs["positions"] if "positions" in kwargs else args[1]
        offsets = runner.query_start_loc.cpu[: len(req_ids) + 1].tolist()
        for i, rid in enumerate(req_ids):
            if self._hl_wants.get(rid):
                pos = positions[offsets[i] : offsets[i + 1]].tolist()
                self._hl_plan_request(rid, pos, offsets[i], positions.device)
        return None

    def _hl_plan_request(self, rid: str, pos: list[int], offset: int, device: torch.device) -> None:
        """Plan the rows of this step's flattened batch (request `rid`'s positions `pos`, starting at row `offset`)
        that the request still wants, and mark those positions read."""
        want = self._hl_wants.get(rid)
        rows = [offset + j for j, p in enumerate(pos) if p in want] if want else []
        if rows:
            index = torch.tensor(rows, device=device)  # moved once, not once per layer
            self._hl_plan.append((rid, index, [pos[r - offset] for r in rows]))
            want.difference_update(pos)  # type: ignore[union-attr]

    def _hl_hook(self, layer: int, fused: bool):
        def hook(module: torch.nn.Module, inputs: tuple, output: Any) -> None:
            if not self._hl_plan:
                return None
            if fused and isinstance(output, tuple):  # vLLM's fused (mlp_delta, residual): the residual is the sum
                hidden, residual = output
                x = hidden if residual is None else hidden + residual
            else:
                x = output[0] if isinstance(output, tuple) else output
            for rid, rows, pos in self._hl_plan:
                got = x.index_select(0, rows.to(x.device)).detach().float()  # stays on the device until taken
                store = self._hl_rows[rid]
                for k, p in enumerate(pos):
                    store[(layer, p)] = got[k]
            return None

        return hook

    def hl_uninstall(self) -> int:
        """Remove every hook (the engine runs exactly as plain vLLM); returns how many were removed."""
        handles, self._hl_handles = getattr(self, "_hl_handles", []), []
        for handle in handles:
            handle.remove()
        return len(handles)

    def hl_take(self, req_ids: list[str]) -> dict[str, dict]:
        """Captured rows of these requests ({req_id: {"layer:pos": float32 bytes}}), forgotten once taken."""
        out: dict[str, dict] = {}
        for rid in req_ids:
            self._hl_wants.pop(rid, None)
            self._hl_seen.discard(rid)
            rows = self._hl_rows.pop(rid, {})
            out[rid] = {}
            if rows:  # one copy off the device per request
                host = torch.stack(list(rows.values())).cpu()
                out[rid] = {f"{layer}:{p}": t.numpy().tobytes() for (layer, p), t in zip(rows, host)}
        return out
