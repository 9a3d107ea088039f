"""Recommendations for an online retailer from its purchase history, as a Dagster code location."""
