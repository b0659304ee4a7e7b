"""Experiments: the computations behind the CLI commands and the paper's figures."""
