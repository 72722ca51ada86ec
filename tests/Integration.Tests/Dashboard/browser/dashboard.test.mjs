// Drives the cluster dashboard in headless chromium (playwright-core, no downloaded browser):
//   node dashboard.test.mjs --url http://127.0.0.1:PORT --token TOKEN --drain worker-1 --out DIR [--chromium /usr/bin/chromium]
// Checks: the page loads without a token and shows nothing until one is entered; a wrong token is refused; with the
// right token the workers table, placement and load heatmaps match the live admin API; the traffic table and both
// charts fill; a dry-run rebalance shows its proposal and changes nothing, Apply then stages it to completion; Drain on
// --drain completes (operation Completed, row Drained, no expert left on it in the heatmap).
// Writes dashboard-live.png and dashboard-drained.png (or dashboard-failure.png) into --out. Exit 0 = every check passed.
import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';

function args() {
  const a = { chromium: '/usr/bin/chromium' };
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i += 2) {
    if (!argv[i].startsWith('--') || argv[i + 1] === undefined) {
      throw new Error(`bad argument '${argv[i]}' (expected --name value pairs)`);
    }
    a[argv[i].slice(2)] = argv[i + 1];
  }
  for (const required of ['url', 'token', 'drain', 'out']) {
    if (!a[required]) {
      throw new Error(`--${required} is required`);
    }
  }
  return a;
}

const opts = args();
const log = (msg) => console.log(`[dashboard-test] ${msg}`);
function check(cond, msg) {
  if (!cond) {
    throw new Error('check failed: ' + msg);
  }
  log('ok: ' + msg);
}

async function api(path) {
  const r = await fetch(opts.url + '/admin/v1' + path, { headers: { Authorization: 'Bearer ' + opts.token } });
  if (!r.ok) {
    throw new Error(`GET ${path}: HTTP ${r.status} ${await r.text()}`);
  }
  return r.json();
}

mkdirSync(opts.out, { recursive: true });
const browser = await chromium.launch({
  executablePath: opts.chromium,
  headless: true,
  timeout: 60000,
  // launch() gives chromium a fresh empty profile of its own; the flags keep it off the (closed) network.
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
});
let page;
let exitCode = 1;
try {
  page = await browser.newPage({ viewport: { width: 1400, height: 1100 } });
  const consoleErrors = [];
  page.on('console', (m) => {
    if (m.type() === 'error') {
      consoleErrors.push(m.text());
    }
  });
  page.on('pageerror', (e) => consoleErrors.push(String(e)));
  page.on('dialog', (d) => d.accept());
  page.setDefaultTimeout(30000);

  const response = await page.goto(opts.url + '/admin/dashboard');
  check(response.status() === 200, 'the page loads without a token (HTTP 200)');
  check(await page.locator('#main').isHidden(), 'no cluster data is shown before a token is entered');

  await page.fill('#token', 'wrong-token-wrong-token-0000');
  await page.click('#connect');
  await page.waitForFunction(() => document.getElementById('status').classList.contains('bad'));
  check(/401/.test(await page.textContent('#status')), 'a wrong token is refused with 401 and nothing is shown');
  check(await page.locator('#main').isHidden(), 'the main view stays hidden after a refused token');
  // The refused call is logged by the browser as a failed resource load; only errors after this point count.
  consoleErrors.length = 0;

  await page.fill('#token', opts.token);
  await page.click('#connect');
  const cluster = await api('/cluster');
  await page.waitForFunction((n) => document.querySelectorAll('#workers tbody tr').length === n, cluster.workers.length);
  const rows = await page.$$eval('#workers tbody tr', (trs) => trs.map((tr) => ({
    id: tr.dataset.worker, state: tr.dataset.state, cells: [...tr.cells].map((c) => c.textContent),
  })));
  for (const w of cluster.workers) {
    const row = rows.find((r) => r.id === w.id);
    check(row && row.state === w.state && row.cells[1] === w.grpc_endpoint && row.cells[6] === w.health,
      `workers table shows ${w.id} (${w.grpc_endpoint}, ${w.state}, ${w.health})`);
    check(row.cells[5] === `${w.experts_held} / ${w.experts_assigned}`, `workers table shows ${w.id} holding ${w.experts_held} experts`);
  }
  check(cluster.workers.some((w) => w.id === opts.drain && w.state === 'Active'), `${opts.drain} is Active before the drain`);

  const placement = await api('/placement');
  const cells = await page.$$eval('#placement rect.cell', (rs) => rs.map((r) => [r.dataset.layer, r.dataset.expert, r.dataset.workers]));
  const expected = placement.layers.flatMap((l) => l.experts.map((e) => [String(l.layer), String(e.expert), e.workers.join(' ')]));
  check(cells.length === expected.length && cells.length > 0, `placement heatmap has ${expected.length} layer x expert cells`);
  check(JSON.stringify(cells) === JSON.stringify(expected), 'placement heatmap cells name the holders of every expert in the live plan');

  const load = await api('/experts/load');
  await page.waitForFunction(() => [...document.querySelectorAll('#load rect.cell')].some((r) => Number(r.dataset.recent) > 0));
  const loadCells = await page.$$eval('#load rect.cell', (rs) => rs.length);
  check(loadCells === load.layers.reduce((n, l) => n + l.recent_tokens.length, 0), `expert-load heatmap has ${loadCells} cells, some hot`);

  await page.waitForFunction((n) => document.querySelectorAll('#traffic tbody tr').length === n && document.querySelectorAll('#throughput-chart polyline').length > 0,
    load.workers.length);
  const traffic = await page.$$eval('#traffic tbody tr', (trs) => trs.map((tr) => [tr.dataset.worker, Number(tr.cells[2].textContent.replace(/,/g, ''))]));
  check(traffic.length > 0 && traffic.every(([, rowsSent]) => rowsSent > 0), `traffic matrix lists ${traffic.length} workers with rows sent`);
  // Four polls give three points per line.
  await page.waitForFunction(() => {
    const total = document.querySelector('#throughput-chart polyline[data-series="total"]');
    const latency = document.querySelector('#latency-chart polyline');
    return total && latency && total.getAttribute('points').split(' ').length >= 3 && latency.getAttribute('points').split(' ').length >= 2;
  });
  check(true, 'throughput and latency charts draw lines over several polls');

  // The serving panel: the scheduler's counters from /admin/v1/serving, output tokens/s and request latency over time.
  const serving = await api('/serving');
  check(serving.tokens_generated > 0 && serving.kv_blocks_total > 0, `the serving API counts ${serving.tokens_generated} tokens generated`);
  await page.waitForFunction(() => {
    const tokens = document.querySelector('#tokens-chart polyline[data-series="output tokens/s"]');
    const ttft = document.querySelector('#request-latency-chart polyline[data-series="time to first token"]');
    return tokens && ttft && tokens.getAttribute('points').split(' ').length >= 2 && /Tokens generated/.test(document.getElementById('serving-stats').textContent);
  });
  const tokenRates = await page.$eval('#tokens-chart polyline[data-series="output tokens/s"]', (l) => l.getAttribute('points').split(' ').map((p) => Number(p.split(',')[1])));
  check(tokenRates.length >= 2 && tokenRates.every(Number.isFinite), `output tokens/s and request latency charts draw lines (${tokenRates.length} points)`);
  // Completions keep flowing: the panel catches up with the count read from the API at its next poll.
  await page.waitForFunction((n) => {
    const m = /Tokens generated ([\d,]+)/.exec(document.getElementById('serving-stats').textContent);
    return m && Number(m[1].replace(/,/g, '')) >= n;
  }, serving.tokens_generated);
  check(true, `the serving panel shows the live counters: ${(await page.textContent('#serving-stats')).trim()}`);

  await page.click('#rebalance-dry');
  await page.waitForSelector('#rebalance-plan:not([hidden])');
  const figures = await page.textContent('#rebalance-figures');
  check(/now →/.test(figures) && (await page.$$('#rebalance-heatmap rect.cell')).length === expected.length,
    `dry-run rebalance shows its proposal: ${figures.trim()}`);
  check((await api('/placement')).plan_version === placement.plan_version, 'the dry run changed nothing');
  await page.screenshot({ path: join(opts.out, 'dashboard-live.png'), fullPage: true });

  await page.click('#rebalance-apply');
  await page.waitForSelector('#operation[data-kind="Rebalance"]');
  await page.waitForFunction(() => document.getElementById('operation').dataset.state !== 'Staging', null, { timeout: 120000 });
  check(await page.getAttribute('#operation', 'data-state') === 'Completed', `rebalance applied from the page: ${await page.textContent('#operation-text')}`);
  const rebalanced = await api('/placement');
  check(rebalanced.plan_version > placement.plan_version, `the plan moved to v${rebalanced.plan_version}`);
  await page.waitForFunction((v) => document.getElementById('placement-version').textContent.startsWith(`plan v${v}`), rebalanced.plan_version);
  check(await page.locator('#rebalance-plan').isHidden(), 'the proposal closes once applied');

  await page.click(`#workers tr[data-worker="${opts.drain}"] button.drain`);
  await page.waitForSelector('#operation[data-kind="Drain"]');
  await page.waitForFunction(() => document.getElementById('operation').dataset.state !== 'Staging', null, { timeout: 120000 });
  const opState = await page.getAttribute('#operation', 'data-state');
  const opText = await page.textContent('#operation-text');
  check(opState === 'Completed', `drain operation completed on the page: ${opText}`);
  await page.waitForSelector(`#workers tr[data-worker="${opts.drain}"][data-state="Drained"]`, { timeout: 30000 });
  check(true, `workers table shows ${opts.drain} Drained`);
  await page.waitForFunction((w) => ![...document.querySelectorAll('#placement rect.cell')].some((r) => r.dataset.workers.split(' ').includes(w)), opts.drain);
  check(true, `placement heatmap no longer places any expert on ${opts.drain}`);
  await page.screenshot({ path: join(opts.out, 'dashboard-drained.png'), fullPage: true });

  check(consoleErrors.length === 0, 'no script errors in the page' + (consoleErrors.length ? ': ' + consoleErrors.join(' | ') : ''));
  exitCode = 0;
} catch (e) {
  console.error('[dashboard-test] FAILED: ' + (e && e.stack ? e.stack : e));
  if (page) {
    try {
      await page.screenshot({ path: join(opts.out, 'dashboard-failure.png'), fullPage: true });
      console.error('[dashboard-test] page status: ' + (await page.textContent('#status')));
    } catch {
      // The page itself is gone; the error above says why.
    }
  }
} finally {
  await browser.close();
}
process.exit(exitCode);
