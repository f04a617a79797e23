"""Peers of capserve behind one minimal Starlette endpoint, for benchmarks/load_http.py.

Each module has a ``create_app()`` factory for ``uvicorn --factory``; the model entry they
read comes from ``$BENCH_ENTRY`` (a folder holding ``model.yaml`` and its ``.tflite``).
"""
