"""Hub-ready folders for any artefact (a guard file, an organism folder) with a generated model card."""

from __future__ import annotations

import pytest

from harmlens.errors import HarmlensError
from harmlens.hub import hub_folder, model_card, push_to_hub


def test_guard_file_and_organism_folder_become_hub_folders(tmp_path):
    guard = tmp_path / "guard.safetensors"
    guard.write_bytes(b"not really tensors, only copied")
    card = model_card(
        title="Latent guard for SmolLM2-135M-Instruct",
        base_model="HuggingFaceTB/SmolLM2-135M-Instruct",
        license="apache-2.0",
        recipe={"layers": "10-14", "alpha": 0.05},
        figures={"FPR (harmless val, n=200)": "4.5%"},
    )
    out = hub_folder(guard, tmp_path / "hub_guard", card)
    assert (out / "guard.safetensors").read_bytes() == guard.read_bytes()
    text = (out / "README.md").read_text()
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in text and "- **alpha**: `0.05`" in text
    organism = tmp_path / "organism"
    organism.mkdir()
    (organism / "config.json").write_text("{}")
    out2 = hub_folder(organism, tmp_path / "hub_org", model_card(title="t", base_model=None, license="mit"))
    assert sorted(p.name for p in out2.iterdir()) == ["README.md", "config.json"]
    assert "None recorded with this artefact." in (out2 / "README.md").read_text()
    assert push_to_hub(out2, "someone/organism", dry_run=True) == ["README.md", "config.json"]
    with pytest.raises(HarmlensError, match="already exists"):
        hub_folder(organism, tmp_path / "hub_org", "x")
    with pytest.raises(HarmlensError, match="nothing to publish"):
        hub_folder(tmp_path / "missing", tmp_path / "y", "x")
