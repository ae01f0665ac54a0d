"""Check harmlens's GGUF control vectors numerically against llama.cpp itself (llama-cpp-python).

harmlens layer L is the residual entering block L; harmlens writes a direction for it as llama.cpp's direction.{L-1},
which llama.cpp adds to the output of block L-1. This script steers the embedded SmolLM2-135M-Instruct at harmlens
layer L with strength s in both tools and compares the change of the next-token logits (steered - unsteered):

1. ``prepare`` (a python with harmlens): HF next-token logits of a few chat prompts without steering and with
   harmlens steering (``steer``, unit refusal direction x s) at layers L-1, L and L+1, on the float32 weights harmlens
   dequantises from the embedded GGUF; the control vector harmlens exports for layer L
   (``Directions.to_control_vector``: direction.{L-1}) and the same vector under two wrong mappings (direction.{L},
   direction.{L-2}); and an F32 GGUF of the same dequantised weights (the shipped file is Q4_1, which llama.cpp
   multiplies with 8-bit-quantised activations: that noise is of the size of the difference between neighbouring
   layers, so the F32 copy is the sharp test).
2. ``check`` (a python with llama-cpp-python; harmlens not needed): both GGUFs in llama.cpp on the same token ids;
   each control vector read by llama.cpp's own GGUF reader (ggml's gguf_* API, the way llama.cpp's
   common_control_vector_load reads --control-vector files) and set with llama_set_adapter_cvec over layers
   1..n_layer, one fresh context per vector; the logit changes compared with HF's: cosine and Pearson correlation
   (means over prompts) and top-1 agreement of the steered next token, against HF steering at L-1, L and L+1.

    PYTHONPATH=. python examples/llamacpp_control_vector_check.py prepare --out /tmp/cvcheck
    ../venv-llamacpp/bin/python examples/llamacpp_control_vector_check.py check --out /tmp/cvcheck

(llama-cpp-python built in its own venv: python3 -m venv ../venv-llamacpp; CMAKE_ARGS="-DGGML_NATIVE=OFF
-DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" ../venv-llamacpp/bin/pip install
llama-cpp-python==0.3.36.)
"""

from __future__ import annotations

import argparse
import ctypes
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np


def prepare(out: Path, *, layer: int = 10, strength: float = 24.0, n_prompts: int = 6, model=None, directions=None):
    """HF logits and the control vectors (harmlens's python). Returns the meta dict written to out/meta.json."""
    from harmlens.probes import load_model
    from harmlens.probes.data import builtin_prompts
    from harmlens.probes.directions import extract_directions
    from harmlens.probes.export import write_control_vector
    from harmlens.probes.interventions import steer
    from harmlens.runtime import last_token_logits
    from harmlens.runtime.chat import chat_format
    from harmlens.runtime.loading import embedded_gguf_path, model_name

    out.mkdir(parents=True, exist_ok=True)
    model = model if model is not None else load_model(device="cpu")
    if directions is None:
        harmful, harmless = (builtin_prompts(kind, "train", limit=24) for kind in ("harmful", "harmless"))
        directions = extract_directions(model, harmful, harmless, progress=False)
    half = n_prompts // 2
    texts = builtin_prompts("harmful", "val", limit=half) + builtin_prompts("harmless", "val", limit=n_prompts - half)
    prompts = chat_format(model).render_many(texts)
    vec = directions.unit(layer) * strength

    def logits() -> np.ndarray:
        return last_token_logits(model, prompts, share_prefix=False).double().numpy()

    hf: dict[str, Any] = {"base": logits()}
    for hl in (layer - 1, layer, layer + 1):
        with steer(model, vec, hl):
            hf[f"steer_{hl}"] = logits()
    np.savez(out / "hf_logits.npz", **hf)
    directions.to_control_vector(out / "harmlens.gguf", layers=[layer], scale=strength, model=model)
    d, n, hint = int(model.cfg.d_model), int(model.cfg.n_layers), model_name(model)
    for file, wrong in (("wrong_N=L.gguf", layer + 1), ("wrong_N=L-2.gguf", layer - 1)):  # direction.{L}, .{L-2}
        write_control_vector(out / file, {wrong: vec}, d_model=d, n_layers=n, model_hint=hint)
    meta = {
        "gguf": str(embedded_gguf_path()),
        "layer": layer,
        "strength": strength,
        "vectors": {"harmlens.gguf": layer - 1, "wrong_N=L.gguf": layer, "wrong_N=L-2.gguf": layer - 2},
        "prompts": texts,
        "token_ids": [list(map(int, p.input_ids)) for p in prompts],
    }
    meta["gguf_f32"] = str(dequantised_gguf(embedded_gguf_path(), out / "embedded-f32.gguf"))
    (out / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    return meta


def dequantised_gguf(src: Path, dst: Path) -> Path:
    """A copy of a GGUF with every tensor dequantised to F32 (gguf-py): the weights HF loads, unquantised in
    llama.cpp too; metadata copied as is except general.file_type (ALL_F32)."""
    import gguf

    reader = gguf.GGUFReader(str(src))
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(str(dst), arch)
    for field in reader.fields.values():
        if field.name == "general.architecture" or field.name.startswith("GGUF."):
            continue
        value = 0 if field.name == "general.file_type" else field.contents()  # LlamaFileType.ALL_F32
        sub = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, value, field.types[0], sub_type=sub)
    for t in reader.tensors:
        writer.add_tensor(t.name, np.ascontiguousarray(gguf.quants.dequantize(t.data, t.tensor_type), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


class _GGUFInitParams(ctypes.Structure):
    _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", ctypes.POINTER(ctypes.c_void_p))]


def _ggml():
    """llama.cpp's ggml-base library as shipped in the llama_cpp package, with the gguf_* reader declared."""
    import llama_cpp

    lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
    sigs = {
        "gguf_init_from_file": (ctypes.c_void_p, [ctypes.c_char_p, _GGUFInitParams]),
        "gguf_get_n_tensors": (ctypes.c_int64, [ctypes.c_void_p]),
        "gguf_get_tensor_name": (ctypes.c_char_p, [ctypes.c_void_p, ctypes.c_int64]),
        "gguf_free": (None, [ctypes.c_void_p]),
        "ggml_get_tensor": (ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_char_p]),
        "ggml_n_dims": (ctypes.c_int, [ctypes.c_void_p]),
        "ggml_nelements": (ctypes.c_int64, [ctypes.c_void_p]),
        "ggml_get_data_f32": (ctypes.POINTER(ctypes.c_float), [ctypes.c_void_p]),
        "ggml_free": (None, [ctypes.c_void_p]),
    }
    for name, (res, args) in sigs.items():
        getattr(lib, name).restype, getattr(lib, name).argtypes = res, args
    return lib


def llamacpp_cvec_buffer(path: Path, n_embd: int, n_layer: int, strength: float = 1.0) -> np.ndarray:
    """The buffer llama.cpp's common_control_vector_load builds from a GGUF (direction.N at offset (N-1)*n_embd,
    layer 0 refused, F32 1-D tensors only), read with llama.cpp's GGUF reader; zero-padded to layers 1..n_layer-1 so
    no earlier vector survives in llama.cpp's per-layer tensors."""
    lib = _ggml()
    ctx = ctypes.c_void_p()
    gctx = lib.gguf_init_from_file(str(path).encode(), _GGUFInitParams(False, ctypes.pointer(ctx)))
    if not gctx:
        raise SystemExit(f"llama.cpp cannot read {path} as GGUF")
    buf = np.zeros((n_layer - 1) * n_embd, dtype=np.float32)
    try:
        for i in range(lib.gguf_get_n_tensors(gctx)):
            name = lib.gguf_get_tensor_name(gctx, i).decode()
            head, _, idx = name.partition(".")
            if head != "direction" or not idx.isdigit() or int(idx) == 0:
                raise SystemExit(f"{path}: llama.cpp refuses tensor {name!r}")
            t = lib.ggml_get_tensor(ctx, name.encode())
            if ctypes.c_int.from_address(t).value != 0 or lib.ggml_n_dims(t) != 1:  # ggml_tensor.type: GGML_TYPE_F32
                raise SystemExit(f"{path}: {name} is not a 1-D F32 tensor")
            if lib.ggml_nelements(t) != n_embd:
                raise SystemExit(f"{path}: {name} has {lib.ggml_nelements(t)} values, the model's n_embd is {n_embd}")
            layer = int(idx)
            data = np.ctypeslib.as_array(lib.ggml_get_data_f32(t), shape=(n_embd,))
            buf[(layer - 1) * n_embd : layer * n_embd] += data * strength
    finally:
        lib.gguf_free(gctx)
        lib.ggml_free(ctx)
    return buf


def _llamacpp_logits(gguf: str, token_ids: list[list[int]], cvec: Path | None, threads: int) -> np.ndarray:
    """Next-token logits of each prompt in a fresh llama.cpp context, with the control vector set before any decode."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=gguf, n_ctx=512, n_batch=512, n_threads=threads, logits_all=True, verbose=False)
    n_embd, n_layer = llm.n_embd(), llama_cpp.llama_model_n_layer(llm.model)
    if cvec is not None:
        buf = llamacpp_cvec_buffer(cvec, n_embd, n_layer)
        ptr = buf.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        if llama_cpp.llama_set_adapter_cvec(llm.ctx, ptr, buf.size, n_embd, 1, n_layer) != 0:
            raise SystemExit(f"llama.cpp refused the control vector {cvec}")
    rows = []
    for ids in token_ids:
        llm.reset()
        llm.eval(ids)
        rows.append(np.array(llm.scores[llm.n_tokens - 1], dtype=np.float64))
    llm.close()
    return np.stack(rows)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over prompts of the cosine between two [n, vocab] logit changes."""
    return float(np.mean([x @ y / np.linalg.norm(x) / np.linalg.norm(y) for x, y in zip(a, b)]))


def _one_model(gguf: str, meta: dict, hf, out: Path, threads: int) -> dict:
    """llama.cpp on one GGUF: unsteered agreement with HF, then each control vector's logit change vs HF's."""
    layer, ids = meta["layer"], meta["token_ids"]
    n = len(ids)
    base = _llamacpp_logits(gguf, ids, None, threads)
    res: dict = {
        "unsteered": {
            "top1_vs_hf": f"{int(sum(base.argmax(1) == hf['base'].argmax(1)))}/{n}",
            "max_abs_logit_diff": round(float(np.abs(base - hf["base"]).max()), 4),
        }
    }
    want = hf[f"steer_{layer}"]
    hf_delta = want - hf["base"]
    for file, n_dir in meta["vectors"].items():
        steered = _llamacpp_logits(gguf, ids, out / file, threads)
        delta = steered - base
        corr = np.mean([np.corrcoef(x, y)[0, 1] for x, y in zip(delta, hf_delta)])
        res[f"{file} (direction.{n_dir})"] = {
            f"vs_hf_L{layer}": {
                "cosine": round(_cosine(delta, hf_delta), 6),
                "correlation": round(float(corr), 6),
                "max_abs_diff": round(float(np.abs(delta - hf_delta).max()), 4),
                "top1_steered": f"{int(sum(steered.argmax(1) == want.argmax(1)))}/{n}",
            },
            "cosine_vs_hf_L-1_L_L+1": [
                round(_cosine(delta, hf[f"steer_{x}"] - hf["base"]), 4) for x in (layer - 1, layer, layer + 1)
            ],
        }
    return res


def check(out: Path, *, threads: int = 1) -> dict:
    """llama.cpp's logit changes under each control vector vs harmlens steering on HF (llama-cpp-python's python)."""
    meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    hf = np.load(out / "hf_logits.npz")
    layer = meta["layer"]
    changed = int(sum(hf[f"steer_{layer}"].argmax(1) != hf["base"].argmax(1)))
    result: dict = {
        "layer": layer,
        "strength": meta["strength"],
        "prompts": len(meta["token_ids"]),
        "hf_top1_changed_by_steering": f"{changed}/{len(meta['token_ids'])}",
        "hf_max_abs_logit_change": round(float(np.abs(hf[f"steer_{layer}"] - hf["base"]).max()), 4),
        "hf_cosine_L_vs_L-1_L+1": [
            round(_cosine(hf[f"steer_{layer}"] - hf["base"], hf[f"steer_{x}"] - hf["base"]), 4)
            for x in (layer - 1, layer + 1)
        ],
    }
    for name, key in (("f32", "gguf_f32"), ("q4_1", "gguf")):
        result[name] = _one_model(meta[key], meta, hf, out, threads)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="HF logits and the control vectors (needs harmlens)")
    prep.add_argument("--out", type=Path, required=True)
    prep.add_argument("--layer", type=int, default=10, help="harmlens layer L (default 10)")
    prep.add_argument("--strength", type=float, default=24.0, help="steering strength s (default 24)")
    prep.add_argument("--prompts", type=int, default=6, help="number of chat prompts (default 6)")
    chk = sub.add_parser("check", help="llama.cpp's logit changes vs HF's (needs llama-cpp-python)")
    chk.add_argument("--out", type=Path, required=True)
    chk.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if args.command == "prepare":
        meta = prepare(args.out, layer=args.layer, strength=args.strength, n_prompts=args.prompts)
        print(json.dumps({k: meta[k] for k in ("gguf", "layer", "strength", "vectors")}, indent=1))
    else:
        print(json.dumps(check(args.out, threads=args.threads), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
