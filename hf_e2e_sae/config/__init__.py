"""Configs: pydantic models read from YAML plus command-line overrides, validated once, errors in one line.

The config models themselves live beside what they configure (`training.config.TrainConfig`,
`data.pipeline.DataConfig`, `training.losses.LossConfig`); this package holds the machinery they share.
"""
