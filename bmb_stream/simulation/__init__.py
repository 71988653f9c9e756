"""Simulated streams: class priors along a stream, recipes, and simulating a stream as shards."""
