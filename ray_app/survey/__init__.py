"""A sky survey as one campaign: plan HEALPix patches over an area, run one blind region job
per patch (on the shared density pool, or through the job queue), merge what several patches
and frames found into survey candidates, cross-match them with the registry, and write the
survey's outputs (``plan``, ``run``).
"""
