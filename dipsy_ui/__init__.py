"""DIPSY Studio: training-free synthetic training images for few-shot classification
(dual IP-Adapter guidance, arXiv 2509.22635)."""

__version__ = "0.1.0"
