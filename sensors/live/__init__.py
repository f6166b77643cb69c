"""The live path, in one place.

Producers put trades into the Redis stream ``ticks`` (``resources/live.py``: simulator replay, Alpaca
websocket). The micro-batch sensor (``sensors/live/sensor.py``) runs the coordinator
(``sensors/live/coordinator.py``: read with a consumer group, stage, watermark, request, acknowledge
after success), which stages entries in the staging store (``resources/staging.py``, table
``staged_ticks``) and requests one run of the ``microbatch`` job (``sensors/live/job.py``) per closed
minute. That job is the daily layer assets themselves with the ``live_window`` resource
(``resources/live_window.py``) set to the window: one implementation per layer, the same checks,
materialisations on the window's daily partition. ``feynman live`` (``orchestration/live_cli.py``)
starts a producer. Design notes: docs/live_path.md.
"""
