"""Evaluation through Avalanche's metrics and loggers, summary statistics and plots."""
