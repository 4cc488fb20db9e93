"""Building the index: plan what changed, decode and embed in a pipeline, write to the store."""
