"""The plain per-day work behind the daily assets: one outcome type, one runner, one module a stage.

- `outcome`: `DayOutcome` (day, error, checks, metadata, log lines) and `describe_failures`.
- `runner`: `run_stage` runs a stage's per-day function over days (one in-process, several on a
  process pool), writes each day's lines to the run's log as it finishes and closes with a summary.
- `book`: find or download a day's archive, convert it, check it (`preprocessed_book`, `raw_zip`).
- `labels`: label a day from its book and the next day's, check its class balance (`labelled_frame`).

Nothing here imports dagster: the stage functions are pickled into pool workers, and the Dagster
layer (`assets/`) only turns outcomes into events (`assets/reporting.py`).
"""
