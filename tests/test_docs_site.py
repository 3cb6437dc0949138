"""The docs site (issue 19, item 2): the sidebar follows the layers and lists every notebook, and the static site
(nbdev's doc processing + nbconvert, tools/build_docs.py) builds with no broken internal link, anchor or
cross-reference and a show_doc entry for every public function and class."""
import json, sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT/'tools'))
import build_docs as B


def _nb(path:Path, title='x'):
    path.write_text(json.dumps({'cells': [{'cell_type': 'markdown', 'metadata': {}, 'source': f'# {title}'}],
                                'metadata': {}, 'nbformat': 4, 'nbformat_minor': 5}))


def test_layers_cover_every_number_once():
    nums = [n for lo, hi, _ in B.LAYERS for n in range(lo, hi + 1)]
    assert sorted(nums) == list(range(100))


def test_sidebar_generated_from_layers(tmp_path):
    for n in ('index', '00_core', '01_synth_scene', '02_face_detect', '19_data_detect', '23_models_spotting',
              '36_train_detect', '37_detect_eval', '49_cli', '57_agent_x', '59_demo', '62_explore_spotting'):
        _nb(tmp_path/f'{n}.ipynb')
    c = B.sidebar(tmp_path)['website']['sidebar']['contents']
    assert c[0] == 'index.ipynb'
    sec = {s['section']: s['contents'] for s in c[1:]}
    assert list(sec) == ['Core', 'Synthetic data and faces', 'Data', 'Models', 'Training and evaluation',
                         'Export, registry and operations', 'Prediction, agent and demo', 'Explorers']
    assert sec['Synthetic data and faces'] == ['01_synth_scene.ipynb', '02_face_detect.ipynb']
    assert sec['Training and evaluation'] == ['36_train_detect.ipynb', '37_detect_eval.ipynb']
    assert sec['Prediction, agent and demo'] == ['57_agent_x.ipynb', '59_demo.ipynb']
    assert sec['Explorers'] == ['62_explore_spotting.ipynb']
    assert B.page_of('62_explore_spotting.ipynb') == 'explore_spotting.html'
    # a stale sidebar.yml is found both ways, a notebook without a layer is an error naming it
    B.write_sidebar(tmp_path)
    assert B.missing_from_sidebar(tmp_path) == []
    _nb(tmp_path/'60_explore_aus.ipynb'); (tmp_path/'49_cli.ipynb').unlink()
    assert B.missing_from_sidebar(tmp_path) == ['60_explore_aus.ipynb (not in sidebar.yml)',
                                                '49_cli.ipynb (in sidebar.yml, no such notebook)']
    _nb(tmp_path/'scratch.ipynb')
    with pytest.raises(B.DocsError, match='scratch.ipynb'): B.sidebar(tmp_path)


def test_committed_sidebar_lists_every_notebook():
    "nbs/sidebar.yml (read by Quarto) must be regenerated when a notebook is added: python tools/build_docs.py --sidebar"
    assert B.missing_from_sidebar() == []
    assert (ROOT/'nbs'/'sidebar.yml').read_text() == B.sidebar_yml()
    assert 'sidebar.yml' in yaml.safe_load((ROOT/'nbs'/'_quarto.yml').read_text())['metadata-files']


def test_check_site_finds_broken_links(tmp_path):
    nbs = tmp_path/'nbs'; nbs.mkdir(); out = tmp_path/'site'; out.mkdir()
    _nb(nbs/'index.ipynb'); _nb(nbs/'00_core.ipynb'); _nb(nbs/'20_models.ipynb')
    nav = '<nav id="fl-sidebar"><a href="index.html">i</a><a href="core.html">c</a></nav>'
    (out/'index.html').write_text(f'{nav}<a href="core.html#label_space">ok</a><a href="https://x.org/y">ext</a>'
                                  '<a href="core.html#nope">bad anchor</a><a href="gone.html">bad page</a>'
                                  '<img src="img/missing.png">')
    (out/'core.html').write_text(f'{nav}<h3 id="label_space">LabelSpace</h3><a href="#label_space">self</a>')
    got = B.check_site(out, nbs)
    assert got == ['20_models.ipynb: no page models.html in the site',
                   "index.html: broken anchor 'core.html#nope' (no id 'nope' in core.html)",
                   "index.html: broken link 'gone.html' (gone.html does not exist)",
                   "index.html: broken link 'img/missing.png' (img/missing.png does not exist)"]
    (out/'models.html').write_text('<p>no sidebar</p>')
    assert B.check_site(out, nbs)[0] == '20_models.ipynb: not in the sidebar of models.html'


@pytest.mark.timeout(900)
def test_docs_site_builds(tmp_path, monkeypatch):
    "The whole static site: nbdev's processing (show_doc cells) + nbconvert; no notebook is executed."
    monkeypatch.setenv('FACELAB_ARTIFACTS', str(tmp_path/'artifacts')); monkeypatch.setenv('FACELAB_RUNS', str(tmp_path/'runs'))
    out = tmp_path/'site'
    problems = B.build(out)
    assert problems == [], '\n'.join(problems)
    pages = {p.name for p in out.glob('*.html')}
    assert {B.page_of(n) for n in B.notebooks()} <= pages
    # show_doc rendered by nbdev for exported functions and classes (signature and docstring), with sidebar and links
    from bs4 import BeautifulSoup
    core = (out/'core.html').read_text()
    assert 'id="labelspace"' in core and 'id="get_device"' in core
    assert 'def get_device(' in BeautifulSoup(core, 'html.parser').get_text()
    assert 'href="augment.html"' in core and 'href="index.html"' in core
    assert 'id="clipaugment"' in (out/'augment.html').read_text()
    assert B.undocumented(out) == []


def test_page_rewrites(tmp_path):
    "nbconvert output -> site page: nbdev's '/page.html#x' links, .ipynb links, repo files, Quarto-style lower-case ids."
    import nbformat
    body = ('<h3 id="ClipAugment">ClipAugment<a class="anchor-link" href="#ClipAugment">¶</a></h3>'
            '<a href="/core.html#labelspace">LabelSpace</a> <a href="20_models.ipynb#x">m</a> '
            '<a href="../pyproject.toml">p</a> <a href="https://x.org">e</a> <a href="#ClipAugment">self</a>')
    page = B._fix_html(body, '<nav id="fl-sidebar"></nav>', 'T', B.NBS)
    assert 'id="clipaugment"' in page and 'href="#clipaugment"' in page
    assert 'href="core.html#labelspace"' in page and 'href="models.html#x"' in page and 'href="https://x.org"' in page
    assert 'href="https://github.com/facelab/facelab/blob/main/pyproject.toml"' in page
    # nbdev's frontmatter cell becomes the page title, `echo: false` hides a cell's input, `include: false` drops it
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_raw_cell('---\ntitle: Augmentation\ndescription: Flips\n---'),
                                         nbformat.v4.new_code_cell('#| echo: false\n#| output: asis\nshow_doc(f)'),
                                         nbformat.v4.new_code_cell('#| include: false\nsecret = 1')])
    nb = B._prep(nb)
    assert len(nb.cells) == 2 and nb.cells[0].source.startswith('# Augmentation\n\n> Flips')
    assert nb.cells[1].source == 'show_doc(f)' and nb.cells[1].metadata['transient']['remove_source']
