"""Music mood pipeline: one module per stage, shared config/storage/audio helpers."""
