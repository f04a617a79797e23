"""Keras models for captchas, sized for CPUs and small TFLite files.

* ``cnn`` (default): convolutions only, then per-column features and 1-D convolutions along the
  width for context; CTC over the columns. Every op is a TFLite builtin, it quantizes to int8,
  and it is the fastest to train and to serve.
* ``crnn``: the same convolutions, then a bidirectional GRU. For export the model is rebuilt
  with a fixed batch of 1 and ``unroll=True`` (the weights are copied), which converts to
  builtin ops; a GRU with a dynamic batch would need TensorList (Flex) ops.

Either body can end in a CTC head (variable length; output ``(T, len(charset) + 1)`` with the
blank as class 0, as ``core.decoders`` expects) or a fixed-length head (output
``(L, len(charset))``).
"""

from __future__ import annotations

import dataclasses

ARCHS = ("cnn", "crnn")
HEADS = ("ctc", "fixed")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    arch: str = "cnn"
    decoder: str = "ctc"
    height: int = 50
    width: int = 100
    channels: int = 1
    charset_size: int = 10
    length: int = 4  # positions of a fixed head; the longest label for CTC
    filters: tuple[int, ...] = (16, 32, 64, 96)
    units: int = 128
    dropout: float = 0.2
    batch_norm: bool = True

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, got {self.arch!r}")
        if self.decoder not in HEADS:
            raise ValueError(f"decoder must be one of {HEADS}, got {self.decoder!r}")
        if len(self.filters) < 2:
            raise ValueError("filters needs at least two convolution blocks")

    @property
    def classes(self) -> int:
        return self.charset_size + 1 if self.decoder == "ctc" else self.charset_size

    @property
    def time_steps(self) -> int:
        """Output columns of the CTC head: the width after a stride-2 convolution and a 2x pooling."""
        return -(-self.width // 2) // 2

    @property
    def min_height(self) -> int:
        return 2 ** len(self.filters)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["filters"] = list(self.filters)
        return out

    @classmethod
    def from_dict(cls, values: dict) -> "ModelConfig":
        """The inverse of ``to_dict`` (a checkpoint's ``state.json`` holds filters as a list)."""
        return cls(**{**values, "filters": tuple(values["filters"])})


def _conv_block(keras, x, filters: int, pool: tuple[int, int], name: str, batch_norm: bool, strides: int = 1):
    x = keras.layers.Conv2D(
        filters, 3, strides=strides, padding="same", use_bias=not batch_norm, name=f"{name}_conv"
    )(x)
    if batch_norm:
        x = keras.layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
    x = keras.layers.ReLU(name=f"{name}_relu")(x)
    if pool != (1, 1):
        x = keras.layers.MaxPooling2D(pool, name=f"{name}_pool")(x)
    return x


def _seq_block(keras, x, name: str, batch_norm: bool):
    # Normalizing the sequence layers too keeps their ReLUs alive: without it a CTC model can
    # sit on the all-blank plateau for epochs.
    if batch_norm:
        x = keras.layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def build_model(config: ModelConfig, *, batch_size: int | None = None, unroll: bool = False):
    """The Keras model for ``config``; softmax probabilities out, ``(batch, positions, classes)``."""
    import keras

    c = config
    if c.height < c.min_height:
        raise ValueError(f"input height {c.height} is below {c.min_height}, the least {len(c.filters)} poolings allow")
    if c.decoder == "ctc" and c.time_steps < 2 * c.length + 1:
        raise ValueError(
            f"a CTC head over {c.time_steps} columns (input width {c.width} / 4) cannot safely emit "
            f"{c.length} characters; use a wider input (at least {4 * (2 * c.length + 1)} pixels)"
        )
    inputs = keras.Input((c.height, c.width, c.channels), batch_size=batch_size, name="image")
    x = inputs
    for i, filters in enumerate(c.filters):
        # Halve the width twice (early), the height every block. The first block halves by
        # its stride rather than by pooling: a full-resolution layer costs most on a CPU.
        if i == 0:
            x = _conv_block(keras, x, filters, (1, 1), "block1", c.batch_norm, strides=2)
            continue
        pool = (2, 2) if i < 2 else (2, 1)
        x = _conv_block(keras, x, filters, pool, f"block{i + 1}", c.batch_norm)
    # (B, H', W', F) -> (B, W', H' * F): one feature vector per column.
    h, w, f = x.shape[1], x.shape[2], x.shape[3]
    x = keras.layers.Permute((2, 1, 3), name="columns")(x)
    x = keras.layers.Reshape((w, h * f), name="flatten_columns")(x)
    x = _seq_block(keras, keras.layers.Dense(c.units, use_bias=not c.batch_norm, name="column_dense")(x),
                   "column", c.batch_norm)
    x = keras.layers.Dropout(c.dropout, name="column_dropout")(x)
    if c.arch == "cnn":
        for k in range(2):
            conv = keras.layers.Conv1D(c.units, 5, padding="same", use_bias=not c.batch_norm, name=f"context{k + 1}")
            x = _seq_block(keras, conv(x), f"context{k + 1}", c.batch_norm)
    else:
        gru = keras.layers.GRU(c.units // 2, return_sequences=True, unroll=unroll, reset_after=True, name="gru")
        x = keras.layers.Bidirectional(gru, name="bigru")(x)
    x = keras.layers.Dropout(c.dropout, name="head_dropout")(x)
    if c.decoder == "ctc":
        x = keras.layers.Dense(c.classes, name="logits")(x)
    else:
        x = keras.layers.Dense(c.units // 4, activation="relu", name="squeeze")(x)
        x = keras.layers.Flatten(name="flatten")(x)
        x = keras.layers.Dense(c.length * c.classes, name="logits")(x)
        x = keras.layers.Reshape((c.length, c.classes), name="positions")(x)
    outputs = keras.layers.Softmax(name="probs")(x)
    return keras.Model(inputs, outputs, name=f"{c.arch}_{c.decoder}")


def export_model(trained, config: ModelConfig):
    """A copy of ``trained`` with a fixed batch of 1 (and an unrolled GRU) for TFLite."""
    model = build_model(config, batch_size=1, unroll=config.arch == "crnn")
    model.set_weights(trained.get_weights())
    return model
