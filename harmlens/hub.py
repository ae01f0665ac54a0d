"""Hub-ready folders: a generated model card (README.md) and a push_to_hub helper on huggingface_hub."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from harmlens.errors import HarmlensError


def model_card(
    *,
    title: str,
    base_model: str | None,
    license: str,
    recipe: dict | None = None,
    figures: dict | None = None,
    library_name: str | None = None,
    tags: list[str] | None = None,
    notes: str = "",
) -> str:
    """A Hub model card: YAML metadata (huggingface_hub.ModelCardData) plus recipe and measured figures."""
    from huggingface_hub import ModelCard, ModelCardData

    data = ModelCardData(
        base_model=base_model, license=license, library_name=library_name, tags=["harmlens", *(tags or [])]
    )
    lines = [f"---\n{data.to_yaml()}\n---", f"# {title}", ""]
    if base_model:
        lines += [f"Base model: `{base_model}`.", ""]
    if recipe:
        lines += ["## Recipe", "", *(f"- **{k}**: `{v}`" for k, v in recipe.items()), ""]
    lines += ["## Measured figures", ""]
    if figures:
        lines += ["| measure | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in figures.items()), ""]
    else:
        lines += ["None recorded with this artefact.", ""]
    if notes:
        lines += [notes, ""]
    lines += ["Made with [harmlens](https://github.com/) for safety and interpretability research.", ""]
    return str(ModelCard("\n".join(lines)))


def hub_folder(src: str | os.PathLike, dst: str | os.PathLike, card: str, *, overwrite: bool = False) -> Path:
    """Copy an artefact (a folder, or one file) into a new folder `dst` with README.md = card, atomically."""
    from harmlens.hf import atomic_dir

    src = Path(src)
    if not src.exists():
        raise HarmlensError(f"nothing to publish: {src} does not exist")
    with atomic_dir(dst, overwrite=overwrite, what="hub folder") as tmp:
        if src.is_dir():
            shutil.copytree(src, tmp, dirs_exist_ok=True)
        else:
            shutil.copy2(src, tmp / src.name)
        (tmp / "README.md").write_text(card, encoding="utf-8")
    return Path(dst)


def push_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = True,
    token: str | None = None,
    commit_message: str = "Upload from harmlens",
    dry_run: bool = False,
) -> list[str]:
    """Upload a Hub-ready folder (it must have a README.md card) to a model repo; returns the uploaded file names.

    dry_run checks everything up to the upload and returns the file list without any network call.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.utils import HfHubHTTPError, OfflineModeIsEnabled, validate_repo_id

    folder = Path(folder)
    if not (folder / "README.md").is_file():
        raise HarmlensError(f"{folder} is not Hub-ready: no README.md model card (make it with hub_folder)")
    try:
        validate_repo_id(repo_id)
    except Exception as exc:  # huggingface_hub raises HFValidationError
        raise HarmlensError(f"invalid Hub repo id {repo_id!r}: {' '.join(str(exc).split())[:120]}") from None
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    if dry_run:
        return files
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message=commit_message)
    except (OfflineModeIsEnabled, HfHubHTTPError, OSError, ValueError) as exc:
        first = " ".join(str(exc).split())[:200]
        raise HarmlensError(f"cannot upload {folder} to {repo_id}: {type(exc).__name__}: {first}") from None
    return files
