"""Engines that run :meth:`xrayage.XRayAge.predict_many`'s stages at scale.

- :mod:`xrayage.engines.shards`: input listing and result shards (pyarrow only);
- :mod:`xrayage.engines.ray_engine`: the Ray Data pipeline behind
  ``xrayage predict --engine ray`` (needs the ``cluster`` extra).
"""
