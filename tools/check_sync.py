"""Fail when `nbdev-export` or `nbdev-clean` would change the tree: facelab/ out of sync with nbs/, or a dirty notebook.

Works on a tree with uncommitted edits too: it compares the working tree before and after running both tools.
"""
import hashlib, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

def snapshot():
    files = sorted(p for d in ('nbs', 'facelab') for p in (ROOT/d).rglob('*')
                   if p.is_file() and '__pycache__' not in p.parts and '.ipynb_checkpoints' not in p.parts)
    files.append(ROOT/'README.md')
    return {str(p.relative_to(ROOT)): hashlib.sha1(p.read_bytes()).hexdigest() for p in files}

before = snapshot()
for tool in ('nbdev-export', 'nbdev-clean'):
    subprocess.run([str(BIN/tool)], cwd=ROOT, check=True)
subprocess.run([sys.executable, str(ROOT/'tools'/'readme.py')], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
after = snapshot()
changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
if changed:
    print('These files changed under nbdev-export / nbdev-clean / tools/readme.py; run them and commit the result:')
    for k in changed: print('  ', k)
    sys.exit(1)
print(f'sync-check: {len(after)} files in nbs/ and facelab/ are exported and clean')
