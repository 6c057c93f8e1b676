"""Clients' local training regimes beyond plain cross-entropy (racecar training)."""
