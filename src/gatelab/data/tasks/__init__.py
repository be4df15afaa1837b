"""Synthetic tasks with their own batches and metrics (beyond next-token corpora)."""
from .mqar import MQARBatch, MQARConfig, make_mqar, mqar_accuracy, train_mqar

__all__ = ["MQARBatch", "MQARConfig", "make_mqar", "mqar_accuracy", "train_mqar"]
