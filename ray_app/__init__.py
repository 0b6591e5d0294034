"""ray-app: recover stellar streams from Gaia with exact, sharded kNN-density persistence.

Layers: ``ray_app.core`` (pure computation), ``ray_app.data`` (sources), ``ray_app.io``
(writers/adapters), ``ray_app.engine`` (Ray). Only the engine imports Ray.
"""

__version__ = "0.1.0"
