"""Evaluation: measuring CLIPs and whole models the way the paper does (see docs/)."""
