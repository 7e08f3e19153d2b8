"""hypersphere: alignment and uniformity on the hypersphere (Wang & Isola, ICML 2020)."""

__version__ = "0.1.0"
