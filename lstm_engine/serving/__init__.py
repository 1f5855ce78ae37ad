"""Serving many streams of one Engine in one asyncio process (DESIGN §8).

`Batcher` keeps a registry of streams keyed by anything hashable and runs the frames
that arrive together through one `Engine.step_many`; `Overloaded` is its backpressure.
`lstm_engine.serving.loadtest` drives a WebSocket service open-loop
(`lstm-engine loadtest`).
"""
from .batcher import Batcher, Overloaded

__all__ = ["Batcher", "Overloaded"]
