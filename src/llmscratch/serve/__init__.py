"""Serving: the continuous-batching engine (engine.py) that the HTTP server and `bench serve` run on."""
