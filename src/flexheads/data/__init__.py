"""Datasets: one module per dataset (format, download, parse, normalise) plus the synthetic generators that write
the same formats, so the real-data loaders are the code path the embedded defaults exercise too."""
