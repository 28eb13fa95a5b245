"""Kairos training: model training, baselines, backtests and metrics, tuning, MLflow logging, registry and promotion."""
