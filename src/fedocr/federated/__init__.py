"""Federated training on Flower: the ServerApp and ClientApp, the update pipeline's pure steps,
the run store, the simulation driver and report, and certificates for the deployment engine."""
