"""Plots: ``plot_*(result, ax=None) -> Axes``; they take results, never models."""
