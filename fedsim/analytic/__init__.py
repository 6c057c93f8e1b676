"""Analytic (closed-form) gradient inversion: conv structure, ranks, layer-by-layer solves."""
