"""The ``ddddocr`` package's general OCR model behind the minimal endpoint.

``ddddocr.DdddOcr(show_ad=False).classification(image_bytes)`` with the package's defaults
(its bundled general model on onnxruntime). ddddocr 1.6.1's own ``python -m ddddocr api``
server answers every ``/ocr`` call with an error, so this wrapper is the fair comparison.
"""

from __future__ import annotations

from benchmarks.peers.endpoint import make_app


def build_recognizer(folder=None):
    import ddddocr

    ocr = ddddocr.DdddOcr(show_ad=False)
    return ocr.classification


def create_app():
    return make_app(build_recognizer())
