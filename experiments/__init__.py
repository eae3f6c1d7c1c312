"""Experiments of the paper as commands: grids of training runs, their results, and the fits."""
