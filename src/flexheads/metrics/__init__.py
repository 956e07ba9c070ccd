"""Evaluation metrics as pure numpy functions; each docstring states formula, axes and units."""
