"""fedsim: federated learning on Flower with pluggable gradient-inversion attacks and defences."""

__version__ = "0.1.0"
