"""Executor layer: Jupyter kernels run the code (see the executor issue)."""
