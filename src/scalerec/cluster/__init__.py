"""Execution backends behind one seam: in-process, local worker processes, and (optionally) Ray."""

from scalerec.cluster.executor import Executor, LocalExecutor, get_executor

__all__ = ["Executor", "LocalExecutor", "get_executor"]
