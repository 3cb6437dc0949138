"""Convert percent-format scripts (`# %%` cells) into nbs/ notebooks with a python3 kernelspec.

    .venv/bin/python tools/py2nb.py draft.py [more.py ...] [--out nbs/]

`# %% tags=["parameters"]` keeps papermill's parameters tag. The notebook is the source afterwards:
edit it in Jupyter, or edit the script and convert again.
"""
import argparse, sys
from pathlib import Path
import jupytext, nbformat

KERNELSPEC = {'display_name': 'python3', 'language': 'python', 'name': 'python3'}

def convert(src:Path, out_dir:Path) -> Path:
    nb = jupytext.read(src, fmt='py:percent')
    nb.metadata = {'kernelspec': KERNELSPEC}
    for c in nb.cells:
        c.metadata = {k: v for k, v in c.metadata.items() if k == 'tags'}
        if c.cell_type == 'code': c.outputs, c.execution_count = [], None
    dst = out_dir/(src.stem + '.ipynb')
    nbformat.write(nb, dst)
    return dst

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('scripts', nargs='+', type=Path)
    p.add_argument('--out', type=Path, default=Path(__file__).resolve().parent.parent/'nbs')
    a = p.parse_args()
    for s in a.scripts: print(convert(s, a.out))
