"""worldsim: neural world models of Crafter — the model side (actions, autoencoder, DiT, data, training, eval)."""

__version__ = "0.1.0"
