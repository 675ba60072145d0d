"""The run, one module per stage (``engine.py`` keeps the public ``Uploader``).

feed -> intake (claims, route) -> presign -> put -> settle -> place; ``events`` reports
every result, ``run`` wires the stages into one task group. Stages talk through queues and
narrow calls, and take the narrow ports of ``ports.py`` (never the whole ``Uploader``).
"""
