"""Engines that run the loop's data-heavy work: ``local`` (default, out of core past a memory budget) and ``spark``."""

from ml.engines.base import Engine, MonitoredBatch, TrainedModel, engine_for

__all__ = ["Engine", "MonitoredBatch", "TrainedModel", "engine_for"]
