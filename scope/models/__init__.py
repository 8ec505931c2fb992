"""Model weights: which Hugging Face artifacts each pipeline needs, and fetching them.

The downloader lives in :mod:`scope.models.download` and is imported on demand, so that
declaring artifacts stays cheap for modules that only describe pipelines.
"""

from scope.models.artifacts import PIPELINE_ARTIFACTS, Artifact, is_downloaded, local_paths

__all__ = ["PIPELINE_ARTIFACTS", "Artifact", "is_downloaded", "local_paths"]
