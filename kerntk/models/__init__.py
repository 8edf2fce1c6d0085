"""Ready architectures (the papers' model zoo)."""

from kerntk.models.zoo import cnn, fcn, myrtle, pnn, poly_cnn

__all__ = ["cnn", "fcn", "myrtle", "pnn", "poly_cnn"]
