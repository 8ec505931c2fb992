"""Synthetic weights: tiny random models written in the real file layouts."""
