"""``langfree serve``: a local web UI over the snapshots of any family.

- ``models``: what is served (snapshots, run dirs) and the family traits the UI reads
- ``safety``: server-side limits, the no-network environment, the launch settings
- ``worker``: the bounded queue and requests -> images, a batch at a time
- ``runs``: stats.jsonl / metrics.jsonl curves and preview grids
- ``app``: the gradio layout and handlers

Importing this package imports neither gradio nor torch.
"""
