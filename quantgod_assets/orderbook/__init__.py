"""The pure order-book engine: streaming reader, numba replay, sampling, schema, reference, generator.

Nothing in this package imports dagster.
"""
