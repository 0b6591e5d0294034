"""One recovery, start to finish: its parameters (``params``) and the run (``runner``).

The runner is a plain function of a :class:`~ray_app.pipeline.params.RecoverParams` and an
engine it receives (``ray_app.engine``); it knows nothing of queues or status stores.
"""
