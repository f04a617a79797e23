"""A bare LiteRT endpoint: decode, numpy preprocessing, interpreter, decode text. No features.

PIL decodes the image and converts it to grayscale, resizes it to the model input
(bilinear), numpy scales it to [0, 1]; one ``ai_edge_litert`` interpreter (one thread) runs
it; a numpy greedy CTC (or argmax) turns the output into text. It reads the model's size and
charset from the entry's YAML once, and checks nothing else.
"""

from __future__ import annotations

import io

import numpy as np
import yaml
from ai_edge_litert.interpreter import Interpreter
from PIL import Image

from benchmarks.peers.endpoint import entry_folder, make_app


def build_recognizer(folder=None):
    folder = folder or entry_folder()
    doc = yaml.safe_load((folder / "model.yaml").read_text())
    width, height = doc["input"]["width"], doc["input"]["height"]
    charset = doc["charset"]
    decoder = doc.get("decoder", "ctc")
    decoder = decoder.get("type", "ctc") if isinstance(decoder, dict) else decoder
    interpreter = Interpreter(model_path=str(folder / doc["model"]["file"]), num_threads=1)
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]["index"]
    out = interpreter.get_output_details()[0]["index"]

    def recognize(data: bytes) -> str:
        image = Image.open(io.BytesIO(data)).convert("L").resize((width, height), Image.BILINEAR)
        x = np.asarray(image, dtype=np.float32) * np.float32(1 / 255)
        interpreter.set_tensor(inp, x[None, :, :, None])
        interpreter.invoke()
        best = interpreter.get_tensor(out)[0].argmax(axis=-1)
        if decoder == "fixed":
            return "".join(charset[i] for i in best)
        keep = (best != 0) & np.concatenate(([True], best[1:] != best[:-1]))
        return "".join(charset[i - 1] for i in best[keep])

    return recognize


def create_app():
    return make_app(build_recognizer())
