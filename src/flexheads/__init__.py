"""flexheads: flexible attention heads and transformer training recipes, as a reproducible pipeline."""

import os

# Bit-identical CPU results: without these MKL picks GEMM code paths by memory alignment and load, so the
# same params could give different last digits in two processes. Set before torch makes its first MKL call.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")
os.environ.setdefault("MKL_DYNAMIC", "FALSE")
