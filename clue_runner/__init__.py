"""clue-run: a benchmark runner for Chinese NLU (CLUE, FewCLUE, Chinese STS)."""

__version__ = "0.1.0"
