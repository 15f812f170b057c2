"""The credential core: what to hand a caller, from one cache per scope, and the operator's actions on it.

It knows no Flask, Redis or HTTP: the store, the providers and the metrics are handed in (ports.py).
"""
