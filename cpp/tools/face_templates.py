"""Write the alignment templates of facelab.face.align as JSON for the C++ FaceFrontEnd (the single source of truth is Python).

usage: python cpp/tools/face_templates.py OUT.json
"""
import json, sys
from pathlib import Path


def templates_json() -> dict:
    from facelab.face.align import TEMPLATES, TASK_TEMPLATES, facesynth_points
    pts = facesynth_points().astype(float).tolist()   # unit coordinates; the C++ side multiplies by the size, as Python
    return {'version': 1, 'source': 'facelab.face.align',
            'templates': {n: {'size': t.size, 'mode': t.mode, 'margin': t.margin, 'crop': t.crop, 'grey': t.grey,
                              'points': pts} for n, t in TEMPLATES.items()},
            'tasks': dict(TASK_TEMPLATES)}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1: sys.exit(__doc__)
    out = Path(argv[0])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(templates_json(), indent=1))
    print(f"face templates -> {out}")


if __name__ == '__main__': main()
