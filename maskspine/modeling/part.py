"""The base of the model's parts that hold no weights (proposal and detection generators,
samplers, RoI aligners, losses): a Keras layer that serializes its options (`get_config`
round trip) and computes on what it is given as given, without Keras' autocasting (each
part casts to float32 where its arithmetic needs it, whatever the model's precision)."""

from __future__ import annotations

from typing import Any

from keras import layers


class Part(layers.Layer):
    """A weightless part of the model; `options` are its constructor's keyword arguments,
    kept for `get_config`.

    Subclasses call `super().__init__(options, **kwargs)` with their options as a dict.
    """

    def __init__(self, options: dict[str, Any], **kwargs: Any) -> None:
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        self._options = dict(options)
        self.built = True

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), **self._options}
