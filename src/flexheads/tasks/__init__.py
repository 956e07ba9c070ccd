"""Task wiring: one module per task with its stage workers (download, prepare, train data, evaluate)."""
