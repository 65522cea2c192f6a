"""The results page's claims table, recomputed from runs/ with code of its own (scipy and numpy directly, none of
ea_nb.core's tests): every row of experiments/claims.yaml must be on the saved page (nbs/90_results.ipynb's
outputs) with the same n, estimate, interval, p-values, verdicts and n needed; no exact quantity carries an interval."""
import json, math, re
from fractions import Fraction
from html.parser import HTMLParser
from pathlib import Path
import numpy as np, pytest, yaml
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
LEVEL = 0.05            # the page's one-sided level (TOST: each side)
TARGET_POWER = 0.8
ROWS = yaml.safe_load((ROOT/'experiments'/'claims.yaml').read_text())['rows']
MANIFEST = yaml.safe_load((ROOT/'experiments'/'manifest.yaml').read_text())

# ---- reading runs/ (written again here, not imported from the page)

def _json(*parts):
    f = ROOT.joinpath('runs', *parts, 'metrics.json')
    return json.loads(f.read_text()) if f.exists() else None

def _dig(d, path):
    for k in path.split('/'): d = d.get(k) if isinstance(d, dict) else None
    return d

def arm(src) -> dict:
    "{seed: value} of an arm"
    m = _json(src['run']) or {}
    if 'where' in src:
        return {r['seed']: r[src['key']] for r in m['runs'] if all(r.get(k) == v for k, v in src['where'].items())}
    if 'list' in src: return dict(zip(m['seeds'], _dig(m, src['list'])))
    out = {0: _dig(m, src['key'])}
    for s in MANIFEST[src['run']].get('seeds', []):
        if _json(src['run'], f'seed{s}'): out[s] = _dig(_json(src['run'], f'seed{s}'), src['key'])
    return {s: v for s, v in out.items() if isinstance(v, (int, float))}

def sizes(src):
    t = [r for r in _json(src['run'])['timings'] if r['module'] == src['module']]
    return [r['N'] for r in t], [r[src['key']] for r in t]

# ---- the saved page

class _Table(HTMLParser):
    "Rows of the table whose id is T_claims, as lists of cell texts (tags dropped), and each row's anchor"
    def __init__(self):
        super().__init__(); self.rows, self.cell, self.head, self.anchor = [], None, [], None
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == 'tr': self.rows.append(dict(cells=[], anchor=None))
        elif tag in ('td', 'th'): self.cell = ''
        elif tag == 'a' and a.get('id') and self.rows: self.rows[-1]['anchor'] = a['id']
    def handle_endtag(self, tag):
        if tag in ('td', 'th') and self.cell is not None: self.rows[-1]['cells'].append(self.cell.strip()); self.cell = None
    def handle_data(self, data):
        if self.cell is not None: self.cell += data

def page():
    "{row id: {column: text}} from the saved results notebook, and the summary's markdown"
    nb = json.loads((ROOT/'nbs'/'90_results.ipynb').read_text())
    outs = [o for c in nb['cells'] if c['cell_type'] == 'code' for o in c.get('outputs', [])]
    html = [''.join(o['data']['text/html']) for o in outs if 'text/html' in o.get('data', {}) and 'T_claims' in ''.join(o['data']['text/html'])]
    assert len(html) == 1, f'expected one claims table in the saved page, found {len(html)}: re-run `ea-nb results`'
    p = _Table(); p.feed(html[0])
    head, body = p.rows[0]['cells'], p.rows[1:]
    table = {r['anchor'].removeprefix('claim-'): dict(zip(head, r['cells'])) for r in body}
    md = '\n'.join(''.join(o['data']['text/markdown']) for o in outs if 'text/markdown' in o.get('data', {}))
    return list(table), table, md

IDS, TABLE, SUMMARY = page()

# ---- the statistics, from scipy directly

def one_sided(d, shift, extra, upper):
    "P-value of mean(d) + shift > 0 (upper) or < 0, se² = s²/n + extra, Satterthwaite df"
    n, s2 = len(d), np.var(d, ddof=1)
    if extra == 0:
        return stats.ttest_1samp(d, -shift, alternative='greater' if upper else 'less').pvalue
    se2 = s2/n + extra
    df = (n - 1)*(se2*n/s2)**2
    x = (np.mean(d) + shift)/math.sqrt(se2)
    return stats.t.sf(x, df) if upper else stats.t.cdf(x, df)

def interval(d, extra):
    n, s2 = len(d), np.var(d, ddof=1)
    if extra == 0: return list(stats.ttest_1samp(d, 0).confidence_interval(1 - 2*LEVEL))
    se2 = s2/n + extra; df = (n - 1)*(se2*n/s2)**2
    h = stats.t.isf(LEVEL, df)*math.sqrt(se2)
    return [np.mean(d) - h, np.mean(d) + h]

def power_t(n, gap, sd, extra):
    se2 = sd**2/n + extra; df = (n - 1)*(se2*n/sd**2)**2
    return stats.nct.sf(stats.t.isf(LEVEL, df), df, gap/math.sqrt(se2))

def seeds_needed(gap, sd, extra):
    "Linear-then-bisection search for power ≥ 0.8; inf where even infinite seeds fall short"
    if gap <= 0 or (extra > 0 and stats.norm.sf(stats.norm.isf(LEVEL) - gap/math.sqrt(extra)) < TARGET_POWER): return math.inf
    hi = 2
    while power_t(hi, gap, sd, extra) < TARGET_POWER: hi *= 2
    return next(n for n in range(max(2, hi//2), hi + 1) if power_t(n, gap, sd, extra) >= TARGET_POWER)

def mcnemar_power(n, p10, p01):
    "Exact power by enumerating every (b10, b01, rest) outcome of n paired seeds"
    tot = 0.
    for b10 in range(n + 1):
        for b01 in range(n - b10 + 1):
            k = b10 + b01
            if k and stats.binomtest(b10, k, 0.5, alternative='greater').pvalue <= LEVEL:
                tot += math.factorial(n)/(math.factorial(b10)*math.factorial(b01)*math.factorial(n - k)) * p10**b10 * p01**b01 * (1 - p10 - p01)**(n - k)
    return tot

def holm_adjust(ps):
    m = len(ps); order = np.argsort(ps); out = [None]*m
    for j, i in enumerate(order):
        out[i] = min(1., max(min(1., (m - jj)*ps[order[jj]]) for jj in range(j + 1)))
    return out

def expected(row):
    "What the page must show for `row`, recomputed"
    if row['test'] in ('paired_t', 'ratio_t'):
        bs = row['b'] if isinstance(row['b'], list) else [row['b']]
        parts = []
        for b in bs:
            A, B = arm(row['a']), arm(b)
            seeds = sorted(set(A) & set(B))
            xa, xb = np.array([A[s] for s in seeds]), np.array([B[s] for s in seeds])
            k = row.get('scale', 1)
            if row['test'] == 'ratio_t':
                d = np.log(xb) - np.log(xa) if row.get('better') == 'lower' else np.log(xa) - np.log(xb)
                extra, m = 0., math.log(row.get('margin', 1.))
                lr = np.log(xa) - np.log(xb)
                show = dict(ratio=math.exp(lr.mean()), ci=list(np.exp(stats.ttest_rel(np.log(xa), np.log(xb)).confidence_interval(1 - 2*LEVEL))) if len(d) > 1 else None)
            else:
                d = k*(xa - xb); m = row.get('margin', 0.)
                extra = k*k*(xa.mean()*(1 - xa.mean()) + xb.mean()*(1 - xb.mean()))/row['test_items'] if 'test_items' in row else 0.
                show = dict(est=d.mean(), ci=interval(d, extra) if len(d) > 1 else None)
            if len(d) < 2: parts.append(dict(n=len(d), p=None, q=None, need='unknown', **show)); continue
            if row['direction'] == 'superiority': p, q, gap = one_sided(d, 0, extra, True), one_sided(d, 0, extra, False), d.mean()
            elif row['direction'] == 'non-inferiority': p, q, gap = one_sided(d, m, extra, True), one_sided(d, m, extra, False), d.mean() + m
            else:
                p = max(one_sided(d, m, extra, True), one_sided(d, -m, extra, False))
                q = min(one_sided(d, m, extra, False), one_sided(d, -m, extra, True)); gap = m - abs(d.mean())
            parts.append(dict(n=len(d), p=p, q=q, need=seeds_needed(gap, np.std(d, ddof=1), extra), mean=d.mean(), **show))
        worst = min(parts, key=lambda x: x.get('mean', x.get('est', 0)))
        if any(x['p'] is None for x in parts): return dict(worst, p=None, q=None, need='unknown')
        needs = [x['need'] for x in parts]
        return dict(worst, p=max(x['p'] for x in parts), q=min(x['q'] for x in parts), need=max(needs))
    if row['test'] == 'mcnemar':
        A, B = arm(row['a']), arm(row['b'])
        seeds = sorted(set(A) & set(B)); t = row['solved_at']
        a, b = [A[s] >= t for s in seeds], [B[s] >= t for s in seeds]
        b10 = sum(x and not y for x, y in zip(a, b)); b01 = sum(y and not x for x, y in zip(a, b)); n = len(seeds)
        p = stats.binomtest(b10, b10 + b01, 0.5, alternative='greater').pvalue if b10 + b01 else 1.
        q = stats.binomtest(b10, b10 + b01, 0.5, alternative='less').pvalue if b10 + b01 else 1.
        need = math.inf if b10 <= b01 else next((m for m in range(1, 200) if mcnemar_power(m, b10/n, b01/n) >= TARGET_POWER), math.inf)
        return dict(n=n, p=p, q=q, need=need, counts=(sum(a), n, sum(b), n, b10, b01))
    N, y = sizes(row['a'])
    return dict(n=len(N), N=N, y=y, p=None, q=None)

EXP = {row['id']: expected(row) for row in ROWS}

def _holm_by_family():
    out = {}
    for fam in ('paper', 'ours'):
        ids = [r['id'] for r in ROWS if r['family'] == fam and EXP[r['id']]['p'] is not None]
        for key in ('p', 'q'):
            for i, v in zip(ids, holm_adjust([EXP[i][key] for i in ids])): out[(i, key)] = v
    return out
HOLM = _holm_by_family()

def words(row, p, q, n):
    if p is None or n < row['n']: return 'inconclusive'
    yes, no = ('equivalent', 'not equivalent') if row['direction'] == 'equivalence' else ('supported', 'contradicted')
    return yes if p < LEVEL else no if q < LEVEL else 'inconclusive'

# ---- comparing

def numbers(text):
    return [float(x.replace('−', '-')) for x in re.findall(r'[-+−]?\d+(?:\.\d+)?', text)]

def shown_close(text_value:str, value:float):
    "A number as shown on the page agrees with `value` to the digits it shows"
    digits = len(text_value.partition('.')[2])
    return abs(float(text_value.replace('−', '-')) - value) <= 0.5*10**-digits + 1e-9

def p_close(text, p):
    if p is None: return text == '—'
    if text == '< 0.001': return p < 0.001
    return math.isclose(float(text), p, rel_tol=0.05, abs_tol=5e-4)

def test_every_declared_row_is_on_the_page_in_order():
    assert IDS == [r['id'] for r in ROWS], 'the page and experiments/claims.yaml list different rows: re-run `ea-nb results`'
    assert len(set(IDS)) == len(IDS), 'row ids must be unique'

@pytest.mark.parametrize('row', ROWS, ids=lambda r: r['id'])
def test_row_matches_runs(row):
    e, shown = EXP[row['id']], TABLE[row['id']]
    where = f"{row['id']}: the page shows {shown}, runs/ give {e}; re-run `ea-nb results`"
    assert int(shown['n'].split()[0]) == e['n'], where
    est = shown['estimate [90 % CI]']
    if row['test'] == 'paired_t':
        vals = re.findall(r'[-+]?\d+(?:\.\d+)?', est)
        assert shown_close(vals[0], e['est']), where
        if e['ci'] is not None: assert shown_close(vals[1], e['ci'][0]) and shown_close(vals[2], e['ci'][1]), where
    elif row['test'] == 'ratio_t':
        vals = re.findall(r'\d+\.\d+', est)
        assert shown_close(vals[0], e['ratio']) and shown_close(vals[1], e['ci'][0]) and shown_close(vals[2], e['ci'][1]), where
        assert f"{row['label_a']}'s" in est and ('above 1' in row['metric'] or 'below 1' in row['metric']), where   # direction in words
    elif row['test'] == 'mcnemar':
        got = [int(x) for x in re.findall(r'(\d+)/(\d+)', est)[0] + re.findall(r'(\d+)/(\d+)', est)[1] + re.findall(r'(\d+) : (\d+)', est)[0]]
        assert tuple(got) == e['counts'], where
    if row['family'] in ('paper', 'ours', 'check'):
        assert p_close(shown['p raw'], e['p']), where
    if row['family'] in ('paper', 'ours'):
        assert p_close(shown['p Holm'], HOLM.get((row['id'], 'p'))), where
        assert shown['verdict (raw)'] == words(row, e['p'], e['q'], e['n']), where
        assert shown['verdict (Holm)'] == words(row, HOLM.get((row['id'], 'p')), HOLM.get((row['id'], 'q')), e['n']), where
    if row['family'] == 'check':
        assert shown['verdict (raw)'] == 'check: ' + words(row, e['p'], e['q'], e['n']), where
    if row['family'] in ('paper', 'ours', 'check'):
        need = e['need']
        want = 'not decidable at any n' if need == math.inf else str(need) if isinstance(need, int) else None
        assert (shown['n needed (power 0.8)'] == want) if want else shown['n needed (power 0.8)'].startswith('unknown'), where

def _poly(text):
    "{degree: coefficient} of a formula such as '512 + 1540·N' or '5120·N + 72·N²'"
    out = {}
    for term in text.split(' + '):
        c, _, v = term.partition('·') if '·' in term else ((term, '', '') if 'N' not in term else ('1', '', term))
        out[{'': 0, 'N': 1, 'N²': 2}[v]] = Fraction(c)
    return out

@pytest.mark.parametrize('row', [r for r in ROWS if r['test'] == 'exact_poly'], ids=lambda r: r['id'])
def test_exact_rows_state_the_counted_polynomial_without_interval(row):
    shown, e = TABLE[row['id']], EXP[row['id']]
    formula = shown['estimate [90 % CI]'].split(' (exact')[0]
    coef = _poly(formula)
    assert [sum(c*n**k for k, c in coef.items()) for n in e['N']] == [Fraction(v) for v in e['y']], \
        f"{row['id']}: the page's {formula} does not reproduce the counted {e['y']} at N = {e['N']}"
    assert len(coef) < len(e['N']), f"{row['id']}: {len(coef)} terms fixed by {len(e['N'])} points check nothing"
    linear = max(coef) <= 1
    assert shown['verdict (raw)'] == ('supported' if linear == (row['growth'] == 'at most linear') else 'contradicted') + ' (by the formula)'

@pytest.mark.parametrize('row', [r for r in ROWS if r['family'] in ('exact', 'timing')], ids=lambda r: r['id'])
def test_no_exact_or_timing_row_carries_a_p(row):
    "A counted quantity has no interval; a timing's only interval is its measured slope's"
    if row['family'] == 'timing': assert TABLE[row['id']]['p raw'] == '—'; return
    shown = TABLE[row['id']]
    assert '[' not in shown['estimate [90 % CI]'] and 'CI' not in shown['estimate [90 % CI]'], f"{row['id']}: {shown['estimate [90 % CI]']}"
    assert shown['p raw'] == '—' and shown['p Holm'] == '—', f"{row['id']} is exact: no p-value"

@pytest.mark.parametrize('row', [r for r in ROWS if r['test'] == 'overhead'], ids=lambda r: r['id'])
def test_timing_rows_report_the_overhead_share(row):
    N, t = sizes(row['a'])
    macs = sizes(dict(row['a'], key='MACs'))[1]
    deg = 2 if np.polyfit(N, macs, 2)[0] > 1e-9*max(macs) else 1     # the fit has the MACs' own powers of N
    a = np.polyfit(N, t, deg)[-1]
    shares = [round(100*a/x) for x in t]
    shown = TABLE[row['id']]['estimate [90 % CI]']
    assert [int(x) for x in re.findall(r'(-?\d+)%', shown)] == shares, f"{row['id']}: page {shown}, overhead shares {shares} %"
    if max(map(abs, shares)) >= 10:
        assert TABLE[row['id']]['verdict (raw)'] == 'not decidable: intercept ≥ 10 % of a point'; return
    f = stats.linregress(np.log(N), np.log(t))                          # the slope over the range, its 90 % interval
    half = stats.t.ppf(0.95, len(N) - 2)*f.stderr
    lo, hi = f.slope - half, f.slope + half
    assert f'slope {f.slope:.2f} [{lo:.2f}, {hi:.2f}]' in shown, f"{row['id']}: page {shown}, slope {f.slope:.3f} [{lo:.3f}, {hi:.3f}]"
    linear, quadratic = hi < 1.5, lo > 1.5                                # 1.5: halfway between linear and quadratic growth
    holds, fails = (linear, quadratic) if row['growth'] == 'at most linear' else (quadratic, linear)
    assert TABLE[row['id']]['verdict (raw)'] == ('supported' if holds else 'contradicted' if fails else 'inconclusive')

def test_summary_links_only_rows_of_the_table():
    links = re.findall(r'\]\(#claim-([\w-]+)\)', SUMMARY)
    assert links and set(links) <= set(IDS), f'the summary links rows that are not in the table: {set(links) - set(IDS)}'

def test_checks_are_labelled_and_not_counted_as_support():
    for r in ROWS:
        if r['family'] == 'check':
            assert TABLE[r['id']]['verdict (raw)'].startswith('check: ') and TABLE[r['id']]['p Holm'] == '—'

def test_summary_numbers_match_the_table():
    "The summary's n needed and exact formulas are the table's"
    for rid, k in re.findall(r'\[([\w-]+)\]\(#claim-[\w-]+\) (\d+)(?=[,.])', SUMMARY):
        assert TABLE[rid]['n needed (power 0.8)'] == k, f'summary says {rid} needs {k}, the table {TABLE[rid]["n needed (power 0.8)"]}'
    for rid, f in re.findall(r'\[([\w-]+)\]\(#claim-[\w-]+\) ([^;()]+?) \((?:supported|contradicted)\)', SUMMARY):
        assert TABLE[rid]['estimate [90 % CI]'].startswith(f + ' (exact'), f'summary gives {rid} as {f}, the table as {TABLE[rid]["estimate [90 % CI]"]}'
