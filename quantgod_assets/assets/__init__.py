"""The thin Dagster layer: one module per stage (`book.py`: raw_zip, preprocessed_book and checks).

Kept free of imports on purpose: `day_pipeline` (plain Python) is imported by pool workers, which
must not pay for importing dagster. `definitions.py` imports the asset modules.
"""
