"""``flexheads bench``: training throughput, the ViT against timm's, flexible against standard heads, data stall
and torch.compile, measured side by side in one process (:mod:`flexheads.bench.run`)."""

from flexheads.bench.run import Plan, Rounds, default_plan, run_bench

__all__ = ["Plan", "Rounds", "default_plan", "run_bench"]
