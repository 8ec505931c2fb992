"""Recording live sessions, timelines and reproducible renders."""
