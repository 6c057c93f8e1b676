"""Flower ServerApp and ClientApp, and the runner that drives them."""
