"""gpo-bench: few-shot group and personalized preference alignment, GPO side by side with baselines."""

__version__ = "0.1.0"
