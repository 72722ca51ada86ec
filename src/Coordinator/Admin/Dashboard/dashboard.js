// Cluster dashboard: polls the admin API (/admin/v1) with the operator's bearer token and draws workers, placement,
// expert load, coordinator<->worker traffic and throughput/latency over time. Every value from the API is written
// with textContent or SVG attributes, never parsed as HTML.
'use strict';

(() => {
  const API = '/admin/v1';
  const TOKEN_KEY = 'distributed.admin.token';
  const POLL_MS = 1500;
  const OPERATION_POLL_MS = 500;
  // 160 samples at 1.5 s: the charts span the last 4 minutes.
  const HISTORY = 160;
  const SVG_NS = 'http://www.w3.org/2000/svg';

  const $ = (id) => document.getElementById(id);
  const state = {
    token: sessionStorage.getItem(TOKEN_KEY),
    timer: null,
    workerOrder: [],
    samples: [],
    previousLoad: null,
    previousServing: null,
    operation: null,
    operationTimer: null,
    placementVersion: -1,
  };

  class ApiError extends Error {
    constructor(status, code, message, field) {
      super(message);
      this.status = status;
      this.code = code;
      this.field = field;
    }
  }

  async function api(method, path, body) {
    const init = { method, headers: { Authorization: 'Bearer ' + state.token, Accept: 'application/json' }, cache: 'no-store' };
    if (body !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(API + path, init);
    } catch (e) {
      throw new ApiError(0, 'unreachable', 'the coordinator did not answer: ' + e.message, null);
    }
    let json = null;
    try {
      json = await response.json();
    } catch {
      json = null;
    }
    if (!response.ok) {
      const err = json && json.error ? json.error : { code: 'http_' + response.status, message: response.statusText, field: null };
      throw new ApiError(response.status, err.code, err.message, err.field);
    }
    return json;
  }

  // ---- formatting -------------------------------------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === 'class') {
        node.className = v;
      } else if (k === 'data') {
        Object.assign(node.dataset, v);
      } else {
        node.setAttribute(k, v);
      }
    }
    for (const c of children) {
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      node.setAttribute(k, String(v));
    }
    return node;
  }

  function bytes(n) {
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    let v = Number(n);
    while (v >= 1024 && i < units.length - 1) {
      v /= 1024;
      i++;
    }
    return (i === 0 ? v.toFixed(0) : v.toFixed(1)) + ' ' + units[i];
  }

  const fmt = (n, digits = 0) => Number(n).toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits });

  function workerColour(id) {
    let i = state.workerOrder.indexOf(id);
    if (i < 0) {
      state.workerOrder.push(id);
      i = state.workerOrder.length - 1;
    }
    // Golden-angle hues keep neighbouring workers apart however many there are.
    return `hsl(${(i * 137.508 + 210) % 360}, 62%, 52%)`;
  }

  function setStatus(text, bad) {
    const s = $('status');
    s.textContent = text;
    s.classList.toggle('bad', !!bad);
  }

  function showError(e) {
    const box = $('error');
    if (!e) {
      box.hidden = true;
      box.textContent = '';
      return;
    }
    box.hidden = false;
    box.textContent = e instanceof ApiError ? `${e.status || ''} ${e.code}: ${e.message}${e.field ? ` (field ${e.field})` : ''}` : String(e);
  }

  // ---- token --------------------------------------------------------------------------------------------------------

  function connect(token) {
    state.token = token;
    sessionStorage.setItem(TOKEN_KEY, token);
    $('forget').hidden = false;
    setStatus('Connecting…');
    stopPolling();
    poll();
  }

  function disconnect(message, bad) {
    stopPolling();
    state.token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    $('forget').hidden = true;
    $('main').hidden = true;
    $('summary').replaceChildren();
    setStatus(message, bad);
  }

  function stopPolling() {
    clearTimeout(state.timer);
    state.timer = null;
  }

  // ---- polling ------------------------------------------------------------------------------------------------------

  async function poll() {
    stopPolling();
    if (!state.token) {
      return;
    }
    try {
      // Every call settles before the page decides: a refused token is reported once, after all of them.
      const settled = await Promise.allSettled([api('GET', '/cluster'), api('GET', '/placement'), api('GET', '/experts/load'), api('GET', '/serving')]);
      const refused = settled.find((r) => r.status === 'rejected' && r.reason instanceof ApiError && r.reason.status === 401);
      if (refused) {
        throw refused.reason;
      }
      const failed = settled.slice(0, 3).find((r) => r.status === 'rejected');
      if (failed) {
        throw failed.reason;
      }
      const [cluster, placement, load] = settled.slice(0, 3).map((r) => r.value);
      // The serving counters are optional: a coordinator that is not serving (yet) answers 503.
      const serving = settled[3].status === 'fulfilled' ? settled[3].value : null;
      $('main').hidden = false;
      renderSummary(cluster);
      renderWorkers(cluster);
      renderPlacement(placement);
      recordSample(load, serving);
      renderLoad(load, placement);
      renderTraffic(load);
      renderServing(serving, settled[3].status === 'rejected' ? settled[3].reason : null);
      renderCharts();
      setStatus('Live · updated ' + new Date().toLocaleTimeString());
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) {
        disconnect('The admin API refused the token (401 unauthorized). Enter the right token.', true);
        return;
      }
      setStatus('Update failed: ' + (e.message || e), true);
    }
    if (state.token) {
      state.timer = setTimeout(poll, POLL_MS);
    }
  }

  function renderSummary(c) {
    const parts = [
      ['Model', c.model_fingerprint ? c.model_fingerprint.slice(0, 12) : '–'],
      ['Plan', 'v' + c.plan_version + (c.staged_version != null ? ` (staging v${c.staged_version})` : '')],
      ['Serving', c.serving ? 'yes' : 'no' + (c.problem ? ': ' + c.problem : '')],
      ['Workers', c.workers.length],
    ];
    $('summary').replaceChildren(...parts.map(([k, v]) => el('span', { id: 'summary-' + k.toLowerCase() }, el('b', {}, k + ' '), v)));
  }

  function renderWorkers(c) {
    const busy = state.operation && state.operation.state === 'Staging';
    const rows = c.workers.map((w) => {
      const used = w.memory_capacity_bytes > 0 ? Math.min(1, w.resident_bytes / w.memory_capacity_bytes) : 0;
      const bar = el('div');
      bar.style.width = (used * 100).toFixed(1) + '%';
      const drain = el('button', { type: 'button', class: 'drain danger', data: { worker: w.id } }, 'Drain');
      drain.disabled = busy || w.state === 'Drained' || w.state === 'Draining';
      drain.addEventListener('click', () => startDrain(w.id));
      return el('tr', { data: { worker: w.id, state: w.state } },
        el('td', {}, el('span', { class: 'swatch', 'aria-hidden': 'true' }), w.id),
        el('td', {}, w.grpc_endpoint),
        el('td', { class: 'state state-' + w.state }, w.state),
        el('td', {}, w.shard_state + (w.error ? ' – ' + w.error : '')),
        el('td', {}, el('span', { class: 'mem' }, bar), `${bytes(w.resident_bytes)} / ${bytes(w.memory_capacity_bytes)}`),
        el('td', { class: 'num' }, `${w.experts_held} / ${w.experts_assigned}`),
        el('td', { class: 'health health-' + w.health }, w.health),
        el('td', {}, drain));
    });
    for (const r of rows) {
      r.querySelector('.swatch').style.background = workerColour(r.dataset.worker);
    }
    $('workers').tBodies[0].replaceChildren(...rows);
  }

  // ---- heatmaps -----------------------------------------------------------------------------------------------------

  // A layer x expert grid; cell(layerIndex, expert) returns {fill, title, data} for one cell.
  function heatmap(id, layers, experts, cell) {
    // About 1200 px wide whatever the expert count (Maverick: 128 experts -> 9 px cells), never below 4 px.
    const size = Math.max(4, Math.min(16, Math.floor(1200 / Math.max(1, experts))));
    const left = 44;
    const top = 14;
    const width = left + experts * size + 2;
    const height = top + layers.length * size + 2;
    const root = svg('svg', { viewBox: `0 0 ${width} ${height}`, width, height, role: 'img', 'aria-label': id });
    const step = Math.max(1, Math.ceil(32 / size));
    for (let e = 0; e < experts; e += step) {
      const t = svg('text', { x: left + e * size + 1, y: 10 });
      t.textContent = e;
      root.append(t);
    }
    layers.forEach((layer, li) => {
      const label = svg('text', { x: 0, y: top + li * size + size * 0.75 });
      label.textContent = 'L' + layer;
      root.append(label);
      for (let e = 0; e < experts; e++) {
        const c = cell(li, e);
        const r = svg('rect', { x: left + e * size, y: top + li * size, width: size - 1, height: size - 1, fill: c.fill, class: 'cell' });
        for (const [k, v] of Object.entries(c.data || {})) {
          r.setAttribute('data-' + k, v);
        }
        const title = svg('title');
        title.textContent = c.title;
        r.append(title);
        root.append(r);
        if (c.mark) {
          root.append(svg('circle', { cx: left + e * size + (size - 1) / 2, cy: top + li * size + (size - 1) / 2, r: Math.max(1.5, size / 6), fill: '#fff', 'pointer-events': 'none' }));
        }
      }
    });
    return root;
  }

  function placementGrid(p) {
    const layers = p.layers.map((l) => l.layer);
    const experts = p.layers.reduce((m, l) => Math.max(m, l.experts.length), 0);
    return heatmap('placement', layers, experts, (li, e) => {
      const holders = (p.layers[li].experts[e] || { workers: [] }).workers;
      return {
        fill: holders.length ? workerColour(holders[0]) : '#eee',
        mark: holders.length > 1,
        title: `layer ${layers[li]} expert ${e}: ${holders.length ? holders.join(', ') : 'no holder'}`,
        data: { layer: layers[li], expert: e, workers: holders.join(' ') },
      };
    });
  }

  function legend(p) {
    return [...p.workers.map((w) => {
      const s = el('span', { class: 'swatch' });
      s.style.background = workerColour(w);
      return el('span', {}, s, w);
    }), el('span', {}, '● = replicated (primary colour shown)')];
  }

  function renderPlacement(p) {
    $('placement-version').textContent = `plan v${p.plan_version}${p.staged_version != null ? `, staging v${p.staged_version}` : ''}`;
    if (p.plan_version === state.placementVersion && $('placement').firstChild) {
      return;
    }
    state.placementVersion = p.plan_version;
    $('placement-legend').replaceChildren(...legend(p));
    $('placement').replaceChildren(placementGrid(p));
  }

  function renderLoad(load, placement) {
    $('load-window').textContent = `tokens routed in the last ${fmt(load.window_seconds)} s`;
    const layers = load.layers.map((l) => l.layer);
    const experts = load.layers.reduce((m, l) => Math.max(m, l.recent_tokens.length), 0);
    let max = 0;
    for (const l of load.layers) {
      for (const v of l.recent_tokens) {
        max = Math.max(max, v);
      }
    }
    const holders = new Map(placement.layers.map((l) => [l.layer, l.experts]));
    $('load-legend').replaceChildren(el('span', {}, `0 … ${fmt(max)} tokens per expert (white → red)`));
    $('load').replaceChildren(heatmap('load', layers, experts, (li, e) => {
      const v = load.layers[li].recent_tokens[e] || 0;
      const total = load.layers[li].total_tokens[e] || 0;
      const x = max > 0 ? v / max : 0;
      // White -> amber -> red, so an idle cluster reads as empty and the hottest expert stands out.
      const fill = v === 0 ? '#f3f4f7' : `hsl(${Math.round(45 - 45 * x)}, 90%, ${Math.round(92 - 45 * x)}%)`;
      const on = (holders.get(layers[li]) || [])[e];
      return {
        fill,
        title: `layer ${layers[li]} expert ${e}: ${v} recent, ${total} total${on ? ' · on ' + on.workers.join(', ') : ''}`,
        data: { layer: layers[li], expert: e, recent: v },
      };
    }));
  }

  // ---- traffic and history -----------------------------------------------------------------------------------------

  function recordSample(load, serving) {
    const now = performance.now();
    const sample = { t: now, rate: {}, latency: {}, tokens: {}, requestLatency: {} };
    const ps = state.previousServing;
    if (serving && ps && now > ps.t && serving.tokens_generated >= ps.value.tokens_generated) {
      // Counters since start: the rate and the interval means come from the differences of two polls.
      const seconds = (now - ps.t) / 1000;
      sample.tokens['output tokens/s'] = (serving.tokens_generated - ps.value.tokens_generated) / seconds;
      const first = serving.first_tokens - ps.value.first_tokens;
      const later = serving.later_tokens - ps.value.later_tokens;
      sample.requestLatency['time to first token'] = first > 0 ? (1000 * (serving.time_to_first_token_seconds_sum - ps.value.time_to_first_token_seconds_sum)) / first : null;
      sample.requestLatency['between tokens'] = later > 0 ? (1000 * (serving.inter_token_seconds_sum - ps.value.inter_token_seconds_sum)) / later : null;
    }
    state.previousServing = serving ? { t: now, value: serving } : null;
    const prev = state.previousLoad;
    for (const w of load.workers) {
      const p = prev && prev.workers.get(w.worker_id);
      if (p && now > prev.t) {
        const seconds = (now - prev.t) / 1000;
        sample.rate[w.worker_id] = Math.max(0, (w.rows - p.rows) / seconds);
        const requests = w.requests - p.requests;
        // The API reports the mean since start; the mean of this interval is the change of the latency sum.
        sample.latency[w.worker_id] = requests > 0 ? Math.max(0, (w.mean_latency_ms * w.requests - p.mean_latency_ms * p.requests) / requests) : null;
      }
    }
    state.previousLoad = { t: now, workers: new Map(load.workers.map((w) => [w.worker_id, w])) };
    if (prev) {
      state.samples.push(sample);
      if (state.samples.length > HISTORY) {
        state.samples.shift();
      }
    }
  }

  function renderTraffic(load) {
    const last = state.samples[state.samples.length - 1];
    const rows = load.workers.map((w) => {
      const sw = el('span', { class: 'swatch' });
      sw.style.background = workerColour(w.worker_id);
      const rate = last && last.rate[w.worker_id] != null ? fmt(last.rate[w.worker_id], 1) : '–';
      return el('tr', { data: { worker: w.worker_id } },
        el('td', {}, sw, w.worker_id),
        el('td', { class: 'num' }, fmt(w.requests)),
        el('td', { class: 'num' }, fmt(w.rows)),
        el('td', { class: 'num' }, rate),
        el('td', { class: 'num' }, bytes(w.bytes_sent)),
        el('td', { class: 'num' }, bytes(w.bytes_received)),
        el('td', { class: 'num' }, fmt(w.mean_latency_ms, 2) + ' ms'),
        el('td', { class: 'num' }, fmt(w.max_latency_ms, 2) + ' ms'),
        el('td', { class: 'num' + (w.failures > 0 ? ' health-unhealthy' : '') }, fmt(w.failures)),
        el('td', { class: 'num' }, fmt(w.outstanding_rows)));
    });
    $('traffic').tBodies[0].replaceChildren(...rows);
  }

  function renderServing(s, error) {
    if (!s) {
      $('serving-stats').replaceChildren(el('span', { class: 'muted' }, 'No serving statistics' + (error ? ': ' + (error.message || error) : '')));
      return;
    }
    const kv = s.kv_blocks_total > 0 ? ` (${fmt((100 * s.kv_blocks_used) / s.kv_blocks_total, 1)} %)` : '';
    const parts = [
      ['Running', fmt(s.running)],
      ['Queued', fmt(s.queued)],
      ['KV blocks used', `${fmt(s.kv_blocks_used)} of ${fmt(s.kv_blocks_total)}${kv}`],
      ['KV blocks cached', fmt(s.kv_blocks_cached)],
      ['Prefix cache hit rate', s.prefix_queried_tokens > 0 ? fmt(100 * s.prefix_hit_rate, 1) + ' %' : '–'],
      ['Preemptions', fmt(s.preemptions)],
      ['Tokens generated', fmt(s.tokens_generated)],
      ['Requests finished', fmt(s.requests_finished)],
      ['Mean time to first token', s.first_tokens > 0 ? fmt((1000 * s.time_to_first_token_seconds_sum) / s.first_tokens, 1) + ' ms' : '–'],
    ];
    $('serving-stats').replaceChildren(...parts.map(([k, v]) => el('span', { class: 'stat' }, el('b', {}, k + ' '), v)));
  }

  const SERVING_COLOURS = {
    'output tokens/s': '#2f6fdb',
    'time to first token': '#d9822b',
    'between tokens': '#2f9e6e',
  };

  function chart(id, key, unit) {
    const W = 600;
    const H = 170;
    const pad = { l: 46, r: 8, t: 8, b: 18 };
    const series = new Map();
    state.samples.forEach((s, i) => {
      for (const [w, v] of Object.entries(s[key])) {
        if (v == null) {
          continue;
        }
        if (!series.has(w)) {
          series.set(w, []);
        }
        series.get(w).push([i, v]);
      }
    });
    if (key === 'rate') {
      const total = state.samples.map((s, i) => [i, Object.values(s.rate).reduce((a, b) => a + b, 0)]);
      series.set('total', total);
    }
    let max = 0;
    for (const pts of series.values()) {
      for (const [, v] of pts) {
        max = Math.max(max, v);
      }
    }
    max = max > 0 ? max * 1.1 : 1;
    // The time axis grows with the samples until it spans HISTORY of them, so a new page shows lines at once.
    const span = Math.min(HISTORY, Math.max(40, state.samples.length));
    const x = (i) => pad.l + (i / (span - 1)) * (W - pad.l - pad.r);
    const y = (v) => H - pad.b - (v / max) * (H - pad.t - pad.b);
    const root = svg('svg', { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: 'none', role: 'img', 'aria-label': id });
    root.append(svg('line', { class: 'axis', x1: pad.l, y1: H - pad.b, x2: W - pad.r, y2: H - pad.b }));
    root.append(svg('line', { class: 'axis', x1: pad.l, y1: pad.t, x2: pad.l, y2: H - pad.b }));
    for (const [v, label] of [[max, fmt(max, max < 10 ? 2 : 0)], [max / 2, fmt(max / 2, max < 10 ? 2 : 0)], [0, '0']]) {
      const t = svg('text', { x: 2, y: y(v) + 3 });
      t.textContent = label + (v === max ? ' ' + unit : '');
      root.append(t);
    }
    const axis = svg('text', { x: pad.l, y: H - 4 });
    axis.textContent = `last ${Math.round((span * POLL_MS) / 1000)} s, one point per ${POLL_MS / 1000} s`;
    root.append(axis);
    for (const [w, pts] of series) {
      if (pts.length === 0) {
        continue;
      }
      const line = svg('polyline', {
        points: pts.map(([i, v]) => `${x(i + span - state.samples.length).toFixed(1)},${y(v).toFixed(1)}`).join(' '),
        stroke: w === 'total' ? '#1d2330' : SERVING_COLOURS[w] || workerColour(w),
        'data-series': w,
      });
      if (w === 'total') {
        line.setAttribute('stroke-dasharray', '4 3');
      }
      const title = svg('title');
      title.textContent = w;
      line.append(title);
      root.append(line);
    }
    $(id).replaceChildren(root);
  }

  function renderCharts() {
    chart('tokens-chart', 'tokens', 'tok/s');
    chart('request-latency-chart', 'requestLatency', 'ms');
    chart('throughput-chart', 'rate', 'rows/s');
    chart('latency-chart', 'latency', 'ms');
  }

  // ---- changes ------------------------------------------------------------------------------------------------------

  async function startDrain(workerId) {
    if (!window.confirm(`Drain ${workerId}? Its experts move to the other workers; once completed it holds nothing and is safe to stop.`)) {
      return;
    }
    showError(null);
    try {
      follow(await api('POST', `/workers/${encodeURIComponent(workerId)}/drain`));
    } catch (e) {
      showError(e);
    }
  }

  function rebalanceBody(dryRun) {
    const body = { dry_run: dryRun, load_window: $('rebalance-window').value };
    const extra = $('rebalance-extra').value.trim();
    if (extra !== '') {
      const n = Number(extra);
      if (!Number.isInteger(n) || n < 0) {
        throw new ApiError(0, 'invalid_argument', 'extra replicas per layer must be a whole number ≥ 0 (or empty for auto)', 'extra_replicas_per_layer');
      }
      body.extra_replicas_per_layer = n;
    }
    return body;
  }

  async function rebalanceDryRun() {
    showError(null);
    $('rebalance-dry').disabled = true;
    try {
      const r = await api('POST', '/rebalance', rebalanceBody(true));
      $('rebalance-summary').replaceChildren(
        el('div', { id: 'rebalance-figures' },
          `Busiest worker ÷ mean: ${fmt(r.before.max_over_mean, 3)} now → ${fmt(r.after.max_over_mean, 3)} proposed `
          + `(worst layer ${fmt(r.before.worst_layer_max_over_mean, 3)} → ${fmt(r.after.worst_layer_max_over_mean, 3)}); `
          + `${r.experts_moved} expert copies to load.`));
      const workers = [...new Set([...Object.keys(r.before.worker_load), ...Object.keys(r.after.worker_load)])].sort();
      $('rebalance-balance').tBodies[0].replaceChildren(...workers.map((w) => el('tr', {},
        el('td', {}, w),
        el('td', { class: 'num' }, fmt(100 * (r.before.worker_load[w] || 0), 1) + ' %'),
        el('td', { class: 'num' }, fmt(100 * (r.after.worker_load[w] || 0), 1) + ' %'))));
      $('rebalance-heatmap').replaceChildren(placementGrid(r.proposed));
      $('rebalance-plan').hidden = false;
      $('rebalance-apply').disabled = false;
    } catch (e) {
      showError(e);
    } finally {
      $('rebalance-dry').disabled = false;
    }
  }

  async function rebalanceApply() {
    showError(null);
    $('rebalance-apply').disabled = true;
    try {
      const r = await api('POST', '/rebalance', rebalanceBody(false));
      $('rebalance-plan').hidden = true;
      if (r.operation) {
        follow(r.operation);
      } else {
        showError('The rebalance changed nothing (the plan already matches the measured load).');
      }
    } catch (e) {
      showError(e);
      $('rebalance-apply').disabled = false;
    }
  }

  function follow(op) {
    state.operation = op;
    renderOperation();
    clearTimeout(state.operationTimer);
    if (op.state === 'Staging') {
      state.operationTimer = setTimeout(async () => {
        try {
          follow(await api('GET', `/operations/${encodeURIComponent(op.id)}`));
        } catch (e) {
          showError(e);
          state.operationTimer = setTimeout(() => follow(state.operation), OPERATION_POLL_MS * 4);
        }
      }, OPERATION_POLL_MS);
    } else {
      poll();
    }
  }

  function renderOperation() {
    const op = state.operation;
    const box = $('operation');
    box.hidden = false;
    box.className = 'panel op-' + op.state;
    box.dataset.id = op.id;
    box.dataset.kind = op.kind;
    box.dataset.state = op.state;
    $('operation-id').textContent = `${op.id} (${op.kind})`;
    const staged = op.workers_total > 0 ? `${op.workers_staged}/${op.workers_total} workers staged` : '';
    const ms = op.finished_unix_ms ? op.finished_unix_ms - op.created_unix_ms : null;
    const took = ms == null ? '' : ms < 1000 ? ` in ${fmt(ms)} ms` : ` in ${fmt(ms / 1000, 1)} s`;
    $('operation-text').textContent = `${op.state}${took} · plan v${op.base_version} → v${op.target_version} · ${staged} · ${op.description}`
      + (op.error ? ` · error: ${op.error}` : '');
    const done = op.state === 'Staging' ? (op.workers_total > 0 ? op.workers_staged / op.workers_total : 0) : 1;
    $('operation-bar').style.width = (100 * done).toFixed(0) + '%';
    for (const b of document.querySelectorAll('button.drain')) {
      const ws = b.closest('tr').dataset.state;
      b.disabled = op.state === 'Staging' || ws === 'Drained' || ws === 'Draining';
    }
  }

  // ---- start --------------------------------------------------------------------------------------------------------

  document.addEventListener('DOMContentLoaded', () => {
    $('token-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const t = $('token').value.trim();
      if (t === '') {
        setStatus('Enter the admin token.', true);
        return;
      }
      $('token').value = '';
      connect(t);
    });
    $('forget').addEventListener('click', () => disconnect('Token forgotten. Enter the admin token to load the cluster.', false));
    $('rebalance-dry').addEventListener('click', rebalanceDryRun);
    $('rebalance-apply').addEventListener('click', rebalanceApply);
    $('rebalance-cancel').addEventListener('click', () => {
      $('rebalance-plan').hidden = true;
    });
    if (state.token) {
      connect(state.token);
    }
  });
})();
