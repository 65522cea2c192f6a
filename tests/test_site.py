"The built site in a real browser, offline: every page loads, no image is missing, no internal link is broken, maths is typeset, code and tables fit"
import functools, http.server, os, shutil, threading
from pathlib import Path
from urllib.parse import urljoin, urlparse
from urllib.request import urlopen
from urllib.error import HTTPError
import pytest

ROOT = Path(__file__).resolve().parents[1]
SITE, SHOTS = ROOT/'_proc'/'_docs', ROOT/'_proc'/'screenshots'
CHROMIUM, DRIVER = shutil.which('chromium') or '/usr/bin/chromium', shutil.which('chromedriver') or '/usr/bin/chromedriver'

@pytest.fixture(scope='module')
def server():
    assert SITE.is_dir(), f'{SITE} is missing: build the site with `make docs` (make test does it first)'
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(SITE))
    handler.log_message = lambda *a: None
    srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    srv.handle_error = lambda *a: None           # a client closing early is not a site error
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f'http://127.0.0.1:{srv.server_address[1]}/'
    srv.shutdown()

@pytest.fixture(scope='module')
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    assert Path(CHROMIUM).exists() and Path(DRIVER).exists(), \
        'headless Chromium is needed: `make browser` (apt-get install chromium chromium-driver) installs it'
    os.environ['SE_OFFLINE'] = 'true'          # never let Selenium Manager fetch a driver
    o = webdriver.ChromeOptions()
    o.binary_location = CHROMIUM
    for f in ('--headless=new', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-sync',
              '--disable-background-networking', '--disable-component-update', '--window-size=1280,1600',
              f'--user-data-dir={tmp_path_factory.mktemp("chromium")}'):
        o.add_argument(f)
    d = webdriver.Chrome(options=o, service=Service(DRIVER))
    d.set_page_load_timeout(60)
    yield d
    d.quit()

PAGES = sorted(p.name for p in SITE.glob('*.html')) if SITE.is_dir() else []
SHOWN = ('index.html', '00_attention.html', '90_results.html')  # the pages whose screenshots are looked at
BROKEN_IMGS = "return [...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src)"
LINKS = "return [...document.querySelectorAll('a[href]')].map(a => a.href)"
# scripts and stylesheets must come from the site itself: a CDN does not load offline
OFFSITE = """return [...document.querySelectorAll('script[src], link[rel=stylesheet]')].map(e => e.src || e.href)
  .filter(u => !u.startsWith(location.origin))"""
# prose text (not code, not typeset maths) that still holds a TeX delimiter: maths the browser did not typeset
RAW_TEX = r"""const w = document.createTreeWalker(document.querySelector('main') || document.body, NodeFilter.SHOW_TEXT);
  const out = [];
  for (let n; (n = w.nextNode());)
    if (!n.parentElement.closest('pre, code, script, style, .katex') && /\\\(|\\\[|\$\$/.test(n.data)) out.push(n.data.trim().slice(0, 80));
  return out"""
MATHS = "return [document.querySelectorAll('span.math').length, document.querySelectorAll('.katex').length, document.querySelectorAll('.katex-error').length]"
# code blocks and tables wider than the column they sit in (they would scroll sideways)
TOO_WIDE = """return [...document.querySelectorAll('main pre, main table')].filter(e => e.offsetParent !== null)
  .map(e => [e.tagName, e.tagName === 'PRE' ? e.scrollWidth : e.offsetWidth, e.tagName === 'PRE' ? e.clientWidth : e.closest('main').clientWidth, e.closest('.cell-output') ? 'output' : 'source', e.innerText.split('\\n').reduce((a, l) => l.length > a.length ? l : a, '').slice(0, 60)])
  .filter(([t, s, c]) => s > c + 1)"""

def test_every_notebook_has_a_page():
    nbs = [p for p in (ROOT/'nbs').glob('*.ipynb') if not p.name.startswith('_')]
    assert nbs and all(f'{p.stem}.html' in PAGES for p in nbs), f'pages: {PAGES}'

@pytest.mark.parametrize('page', PAGES)
def test_page(page, server, browser):
    browser.get(server + page)
    assert browser.execute_script('return document.readyState') == 'complete'
    assert browser.find_elements('css selector', 'h1'), f'{page} has no title'
    assert browser.execute_script(BROKEN_IMGS) == [], f'{page} shows images that did not load'
    bad = []
    for href in set(browser.execute_script(LINKS)):
        u = urlparse(href)
        if not href.startswith(server) or not u.path.endswith(('.html', '/', '.png', '.css')): continue
        try: urlopen(urljoin(server, u.path)).close()
        except HTTPError as e: bad.append(f'{u.path} ({e.code})')
    assert not bad, f'{page} links to missing pages: {bad}'
    assert browser.execute_script(OFFSITE) == [], f'{page} loads scripts or styles from outside the site'
    assert browser.execute_script(RAW_TEX) == [], f'{page} shows raw TeX: KaTeX (site_libs katex/) did not typeset it'
    n_math, n_katex, n_err = browser.execute_script(MATHS)
    assert n_katex >= n_math and n_err == 0, f'{page}: {n_math} maths spans, {n_katex} typeset, {n_err} KaTeX errors'
    assert browser.execute_script(TOO_WIDE) == [], f'{page} has code or tables wider than the column at 1280 px'
    if page in SHOWN:                          # the whole page (up to 8000 px) at 1280 px wide, to be looked at
        SHOTS.mkdir(parents=True, exist_ok=True)
        browser.set_window_size(1280, min(8000, browser.execute_script('return document.documentElement.scrollHeight')))
        try: assert browser.save_screenshot(str(SHOTS/page.replace('.html', '.png')))
        finally: browser.set_window_size(1280, 1600)

def test_derivation_has_maths(server, browser):
    "The derivation is the page with the most maths: it must have some, typeset"
    browser.get(server + '00_attention.html')
    n_math, n_katex, n_err = browser.execute_script(MATHS)
    assert n_math > 10 and n_katex >= n_math and n_err == 0, (n_math, n_katex, n_err)
