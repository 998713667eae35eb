"""Prediction: the mood of any audio file with a trained model (CLI, batch DAG, served MLflow model)."""
