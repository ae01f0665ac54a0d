"""harmlens.guards: training loop, model organisms, Latent Guard, adversarial training (not built yet)."""
