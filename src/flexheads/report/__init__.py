"""Report: comparison tables (and, later, the thesis figures) built only from stage outputs."""
