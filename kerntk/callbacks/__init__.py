"""Callbacks that go in ``model.fit``: NTK spectrum, critical learning rate (measurement), LR
raises and a divergence guard (control), AGOP alignment."""

from kerntk.callbacks.agop_alignment import AGOPAlignmentLogger
from kerntk.callbacks.catapult_raise import CatapultRaise
from kerntk.callbacks.critical_lr import CriticalLRMonitor
from kerntk.callbacks.divergence_guard import DivergenceGuard
from kerntk.callbacks.ntk_spectrum import NTKSpectrumTracker

__all__ = ["AGOPAlignmentLogger", "CatapultRaise", "CriticalLRMonitor", "DivergenceGuard",
           "NTKSpectrumTracker"]
