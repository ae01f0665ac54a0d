"""harmlens.attacks: role-modality perturbations, text jailbreaks, judges and ASR evaluation (not built yet)."""
