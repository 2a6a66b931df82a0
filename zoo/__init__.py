"""Breast-cancer multimodal fusion model zoo."""
