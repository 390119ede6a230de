"""Shared pieces of the studies: a set of models to analyse, the zoo's training, and one function per
analysis that computes over every model and saves the data its report section is drawn from."""
from analyses.common.inputs import ModelSet

__all__ = ["ModelSet"]
