"""The numerics and data rules of the pipeline: plain Python, NumPy, pandas and JAX.

Nothing in this package imports Dagster or MLflow, so every function here can be tested with
small arrays and frames.
"""
