"""What a real deployment needs beyond Flower: TLS certificates and SuperNode keys."""
