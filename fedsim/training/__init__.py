"""Clients' local training: the loop (:mod:`~fedsim.training.local`), its objective,
racecar training."""
