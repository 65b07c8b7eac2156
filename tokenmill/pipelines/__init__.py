"""Beam wiring only: options, ModelHandlers, PTransforms, sinks."""
