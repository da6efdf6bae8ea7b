"""zhang: the randomization tests of Zhang et al. (2017) as one jit-compiled program over a
grid of replicas."""

__version__ = "0.1.0"
