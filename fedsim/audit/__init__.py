"""The architecture audit: COPA's c(M) (Definition 2.1) for a model and input shape."""
