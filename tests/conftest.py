"""Shared pytest setup.

- Tests marked `slow` (declared in pyproject.toml) run only with FACELAB_SLOW=1, so `make test` stays inside CI's
  time budget.
- Under pytest-xdist (`make pytest` runs two workers) every worker gets its own FACELAB_ARTIFACTS and FACELAB_RUNS,
  so caches, stores and run folders are never shared between concurrently running test files, and one BLAS/OpenMP
  thread, so two workers fill two cores instead of fighting over them.
- Except the stage-1 weights (`cache/pretrain`: micro, `facelab.runs.facesynth_backbone`; `cache/au_pretrain`: AU,
  nbs/32_train_au.ipynb's `stage1_weights`): each worker's folder is a link to one folder both share. They are keyed by
  their settings, made under an exclusive file lock (a process that needs the same weights waits, then reads them) and
  written atomically, so sharing them is safe; without it both workers trained the same stage 1 (test_train_au.py and
  test_demo.py need the AU one, ~4 min each on a busy CI machine; test_train_micro.py, test_jobs.py, test_pipeline.py
  and test_demo.py the micro one, ~2 min).
"""
import os
from pathlib import Path
import pytest

_worker = os.environ.get('PYTEST_XDIST_WORKER')
if _worker:
    _base = os.environ.get('FACELAB_ARTIFACTS')
    for _k in ('FACELAB_ARTIFACTS', 'FACELAB_RUNS'):
        if os.environ.get(_k): os.environ[_k] = str(Path(os.environ[_k])/_worker)
    if _base:
        for _name in ('pretrain', 'au_pretrain'):
            _shared, _mine = Path(_base)/'shared'/'cache'/_name, Path(os.environ['FACELAB_ARTIFACTS'])/'cache'/_name
            _shared.mkdir(parents=True, exist_ok=True)
            if not (_mine.exists() or _mine.is_symlink()):    # (a folder left by an earlier run stays this worker's own)
                _mine.parent.mkdir(parents=True, exist_ok=True)
                _mine.symlink_to(_shared, target_is_directory=True)
    os.environ.setdefault('OMP_NUM_THREADS', '1')
    try:
        import torch; torch.set_num_threads(int(os.environ['OMP_NUM_THREADS']))
    except ImportError: pass

def pytest_collection_modifyitems(config, items):
    if os.environ.get('FACELAB_SLOW') == '1': return
    skip = pytest.mark.skip(reason='slow test: set FACELAB_SLOW=1 to run it')
    for item in items:
        if 'slow' in item.keywords: item.add_marker(skip)
