"""autoprune: AutoML search over structured pruning policies for CNNs."""

__version__ = "0.1.0"
