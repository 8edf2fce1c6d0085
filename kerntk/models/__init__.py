"""Ready architectures (the papers' model zoo)."""

from kerntk.models.zoo import cnn, fcn, myrtle, pnn, poly_cnn

__all__ = ["cnn", "fcn", "myrtle", "pnn", "poly_cnn"]

from kerntk.models.taylor import (TaylorModel, linearize, quadratic, taylor,  # noqa: E402
                                  taylor_term)

__all__ += ["TaylorModel", "linearize", "quadratic", "taylor", "taylor_term"]
