"""Cohort segmentation: a manifest of cases segmented by persistent workers, resumable, with a cohort table.

- ``manifest``: the cases (a CSV or a folder of volumes) and ``--shard I/N`` partitions.
- ``records``: each case's record (model sha256, settings, inputs, outputs' sha256, measurements, timings).
- ``case``: the output folder's layout and the unit of work every backend runs (segment, write, record).
- ``executors``: in-process and local worker processes; ``ray_pool``: Ray actors (optional extra ``cohort``).
- ``table``: ``cohort.csv`` (and Parquet) with QC flags; ``progress``: the progress line; ``run``: the whole run.

No Qt, and nothing here imports torch at module level: the driver of a Ray run needs neither.
"""
