"""Shared pytest setup.

- Tests marked `slow` (declared in pyproject.toml) run only with FACELAB_SLOW=1, so `make test` stays inside CI's
  time budget.
- Under pytest-xdist (`make pytest` runs two workers) every worker gets its own FACELAB_ARTIFACTS and FACELAB_RUNS,
  so caches, stores and run folders are never shared between concurrently running test files, and one BLAS/OpenMP
  thread, so two workers fill two cores instead of fighting over them.
"""
import os
from pathlib import Path
import pytest

_worker = os.environ.get('PYTEST_XDIST_WORKER')
if _worker:
    for _k in ('FACELAB_ARTIFACTS', 'FACELAB_RUNS'):
        if os.environ.get(_k): os.environ[_k] = str(Path(os.environ[_k])/_worker)
    os.environ.setdefault('OMP_NUM_THREADS', '1')
    try:
        import torch; torch.set_num_threads(int(os.environ['OMP_NUM_THREADS']))
    except ImportError: pass

def pytest_collection_modifyitems(config, items):
    if os.environ.get('FACELAB_SLOW') == '1': return
    skip = pytest.mark.skip(reason='slow test: set FACELAB_SLOW=1 to run it')
    for item in items:
        if 'slow' in item.keywords: item.add_marker(skip)
