"""Write the alignment templates of facelab.face.align as JSON for the C++ FaceFrontEnd (the single source of truth is
Python; `facelab serve-config --face` writes the same file beside the engine config).

usage: python cpp/tools/face_templates.py OUT.json
"""
import json, sys
from pathlib import Path


def templates_json() -> dict:
    from facelab.face.align import templates_json
    return templates_json()


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1: sys.exit(__doc__)
    out = Path(argv[0])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(templates_json(), indent=1))
    print(f"face templates -> {out}")


if __name__ == '__main__': main()
