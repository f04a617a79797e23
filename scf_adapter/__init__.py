"""Serverless transport: Tencent SCF (and AWS API Gateway) events into the same Starlette app.

``handler.main_handler`` for event functions, ``templates/scf_bootstrap`` for web functions,
``package`` (``capserve scf package``) for the deploy zip and its ``serverless.yml``.
"""
