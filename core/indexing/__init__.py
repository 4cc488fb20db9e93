"""Building the index: plan what changed, decode and embed in a pipeline, write to the store.

    from core.indexing import BuildOptions, run
    summary = run(settings, reader, BuildOptions(limit=1000, with_captions=True))

`build` runs the steps (and holds the one-builder-at-a-time lock), `plan` decides what
changes, `pipeline` decodes and embeds, `writer` stores, `summary` counts what was done.
"""

from core.indexing.build import BuildOptions, run
from core.indexing.summary import BuildSummary

__all__ = ["BuildOptions", "BuildSummary", "run"]
