"""Serving many streams of one Engine in one asyncio process (DESIGN §8).

`Batcher` keeps a registry of streams keyed by anything hashable and runs the frames
that arrive together through one `Engine.step_many`; `Overloaded` is its backpressure.
With a store (`RedisStore`), streams are checkpointed and resume on another worker
(DESIGN §9). `lstm_engine.serving.loadtest` drives a WebSocket service open-loop
(`lstm-engine loadtest`).
"""
from .batcher import Batcher, Moved, Overloaded
from .redis_store import RedisStore

__all__ = ["Batcher", "Moved", "Overloaded", "RedisStore"]
