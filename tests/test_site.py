"The built site in a real browser: every page loads, no image is missing, no internal link is broken"
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
BROKEN_IMGS = "return [...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src)"
LINKS = "return [...document.querySelectorAll('a[href]')].map(a => a.href)"

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
    if page in ('index.html', '90_results.html'):
        SHOTS.mkdir(parents=True, exist_ok=True)
        assert browser.save_screenshot(str(SHOTS/page.replace('.html', '.png')))
