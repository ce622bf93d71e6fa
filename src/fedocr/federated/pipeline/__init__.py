"""The federated update pipeline (docs/ARCHITECTURE.md): small steps over named NumPy tensors between "the
client finished training" and "the server changed w". NumPy only: no Flower, no torch."""
