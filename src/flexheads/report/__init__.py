"""Report: comparison tables, thesis figures, the HTML page and its MLflow run, built only from stage outputs."""
