"""Dagster assets, grouped as the UI shows them: ingest, graph, model, serving."""
