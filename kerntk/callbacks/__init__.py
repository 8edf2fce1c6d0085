"""Callbacks that go in ``model.fit``: NTK spectrum, critical learning rate, AGOP alignment,
divergence guard."""

from kerntk.callbacks.agop_alignment import AGOPAlignmentLogger
from kerntk.callbacks.critical_lr import CatapultRaise, CriticalLRMonitor
from kerntk.callbacks.divergence_guard import DivergenceGuard
from kerntk.callbacks.ntk_spectrum import NTKSpectrumTracker

__all__ = ["AGOPAlignmentLogger", "CatapultRaise", "CriticalLRMonitor", "DivergenceGuard",
           "NTKSpectrumTracker"]
