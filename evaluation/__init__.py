"""Evaluation: metrics, retrieval, inpainting scores, result records and tables."""
