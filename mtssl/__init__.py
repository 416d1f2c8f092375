"""mtssl: cross-domain self-supervised multi-task feature learning (Ren & Lee 2018)."""

__version__ = "0.1.0"
