// The console page: polls console/series for the samples it has not seen, keeps the
// last few minutes of them, and draws each chart as SVG. Plain JavaScript, no library,
// no build step; every request goes to the service that served the page (relative
// URLs), and only GETs.
'use strict';

(() => {
  const SVG = 'http://www.w3.org/2000/svg';

  // What the page draws: each chart's series by their name in console/series.
  // optional: drawn only while not zero somewhere in the window (rare outcomes).
  // legendOnly: a figure in another unit, shown in the legend, not drawn.
  const outcome = (o, label, color, optional) => ({ key: `lookups_${o}_per_s`, label, color, optional });
  const dropped = (stage, reason, color) => ({ key: `dropped_${stage}_${reason}_per_s`, label: `${stage}, ${reason}`, color, optional: true });
  const CHARTS = [
    { id: 'accepted', title: 'Callbacks accepted', unit: 'per_s', series: [
      { key: 'accepted_per_s', label: 'accepted', color: 'blue', fill: true },
      { key: 'refused_per_s', label: 'refused (4xx, 5xx)', color: 'red', optional: true }] },
    { id: 'reply', title: 'Reply latency, POST /callback', unit: 's', series: [
      { key: 'reply_p50_s', label: 'p50', color: 'sky' },
      { key: 'reply_p99_s', label: 'p99', color: 'indigo' }] },
    { id: 'merged', title: 'Ids merged', unit: 'per_s', series: [
      { key: 'merged_ids_per_s', label: 'merged', color: 'teal', fill: true }] },
    { id: 'behind', title: 'How far merging is behind', unit: 's', series: [
      { key: 'inbox_oldest_s', label: 'oldest unmerged receipt', color: 'amber', fill: true }] },
    { id: 'lookups', title: 'Lookups, by outcome', unit: 'per_s', series: [
      outcome('online', 'online', 'green'), outcome('offline', 'offline', 'gray'),
      outcome('failed', 'failed', 'red', true), outcome('expired', 'expired', 'amber', true),
      outcome('abandoned', 'abandoned', 'purple', true), outcome('rejected', 'rejected (429/503)', 'pink', true)] },
    { id: 'inflight', title: 'Lookups in flight, and the adaptive limit', unit: 'count', series: [
      { key: 'lookups_in_flight', label: 'in flight', color: 'blue', fill: true },
      { key: 'lookup_limit', label: 'limit', color: 'gray' }] },
    { id: 'waiting', title: 'Objects waiting for a lookup', unit: 'count', series: [
      { key: 'pending_waiting', label: 'waiting', color: 'purple', fill: true }] },
    { id: 'objects', title: 'Rows in objects', unit: 'count', series: [
      { key: 'objects_online', label: 'rows', color: 'green', fill: true }] },
    { id: 'expired', title: 'Rows expired', unit: 'per_s', series: [
      { key: 'expired_per_s', label: 'expired', color: 'brown', fill: true }] },
    { id: 'dropped', title: 'Work dropped, by stage and reason', unit: 'per_s', band: 'overloaded', series: [
      { key: 'dropped_per_s', label: 'all', color: 'gray' },
      dropped('inbox', 'expired', 'amber'), dropped('inbox', 'capacity', 'brown'),
      dropped('merge', 'expired', 'olive'), dropped('merge', 'capacity', 'red'),
      dropped('pending', 'expired', 'teal'), dropped('pending', 'capacity', 'pink'),
      dropped('claim', 'expired', 'sky'), dropped('claim', 'capacity', 'purple')] },
    { id: 'database', title: 'Postgres answers (database_up)', unit: 'updown', max: 1, series: [
      { key: 'database_up', label: 'database_up', color: 'green', fill: true }] },
    { id: 'spool', title: 'Spool: callbacks waiting for Postgres', unit: 'bytes', series: [
      { key: 'spool_bytes', label: 'bytes', color: 'amber', fill: true },
      { key: 'spool_segments', label: 'segments', color: 'gray', legendOnly: true, unit: 'count' }] },
  ];
  const TILES = { accepted: 'accepted_total', merged: 'merged_ids_total', lookups: 'lookups_total',
    objects: 'objects_online', expired: 'expired_total', dropped: 'dropped_total' };

  const state = {
    interval: 1, history: 300, // seconds, from the service
    names: [], metric: {}, source: {}, // series names in column order; each one's family and PromQL
    t: [], cols: {}, // sample times (unix ms) and one array of values per series
    okAt: 0, failed: false,
  };
  const $ = (id) => document.getElementById(id);
  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  };
  const svgEl = (tag, attrs) => {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    return e;
  };

  // Numbers, compact and readable.
  function num(v) {
    const a = Math.abs(v);
    const short = (x, big) => (big ? x.toFixed(0) : x.toFixed(1).replace(/\.0$/, ''));
    if (a >= 1e9) return short(v / 1e9, a >= 1e10) + 'G';
    if (a >= 1e6) return short(v / 1e6, a >= 1e7) + 'M';
    if (a >= 1e4) return short(v / 1e3, a >= 1e5) + 'k';
    if (a >= 100 || Number.isInteger(v)) return Math.round(v).toLocaleString('en-US');
    return String(+v.toPrecision(3)); // 9.998 is 10, 2.345 is 2.35, 0.5 stays 0.5
  }
  function fmt(v, unit) {
    if (v === null || v === undefined || Number.isNaN(v)) return '–';
    switch (unit) {
      case 'per_s': return num(v) + '/s';
      case 's':
        if (v === 0) return '0';
        if (v < 1e-3) return (v * 1e6).toFixed(0) + ' µs';
        if (v < 1) return +(v * 1e3).toPrecision(3) + ' ms';
        return +v.toPrecision(3) + ' s';
      case 'bytes': {
        const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
        let i = 0;
        while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
        return (i === 0 ? v.toFixed(0) : v.toFixed(1).replace(/\.0$/, '')) + ' ' + units[i];
      }
      case 'updown': return v >= 1 ? 'up' : 'down';
      default: return num(v);
    }
  }
  const total = (v) => (v === null || v === undefined ? '–' : Math.round(v).toLocaleString('en-US'));

  // The smallest 1, 2 or 5 times a power of ten at or above x.
  function niceCeil(x, floor) {
    x = Math.max(x, floor);
    const p = Math.pow(10, Math.floor(Math.log10(x)));
    const m = x / p;
    return (m <= 1 ? 1 : m <= 2 ? 2 : m <= 5 ? 5 : 10) * p;
  }

  // Samples in.
  function ingest(reply) {
    if (!state.names.length) {
      state.interval = reply.interval_seconds;
      state.history = reply.history_seconds;
      state.names = reply.series.map((s) => s.name);
      for (const s of reply.series) {
        state.metric[s.name] = s.metric;
        state.source[s.name] = s.source;
        state.cols[s.name] = [];
      }
      $('interval').textContent = state.interval === 1 ? 'second' : `${state.interval} s`;
      $('history').textContent = `${Math.round(state.history / 60)} minutes`;
      $('build').textContent = `callback ${reply.version}, revision ${reply.revision}`;
      buildCharts();
    }
    for (const row of reply.samples) {
      state.t.push(row[0]);
      state.names.forEach((n, i) => state.cols[n].push(row[i + 1]));
    }
    const from = last(state.t) - state.history * 1000;
    let drop = 0;
    while (drop < state.t.length && state.t[drop] <= from) drop++;
    if (drop) {
      state.t.splice(0, drop);
      for (const n of state.names) state.cols[n].splice(0, drop);
    }
  }
  const last = (a) => a[a.length - 1];
  function latest(key) {
    const c = state.cols[key] || [];
    for (let i = c.length - 1; i >= 0; i--) if (c[i] !== null) return c[i];
    return null;
  }

  // Charts.
  const charts = [];
  function buildCharts() {
    const root = $('charts');
    for (const def of CHARTS) {
      const card = el('section', 'card');
      card.id = 'chart-' + def.id;
      card.append(el('h2', '', def.title));
      const svg = svgEl('svg', { class: 'chart', role: 'img', 'aria-label': def.title });
      const legend = el('ul', 'legend');
      // Where the numbers come from: the families, and the PromQL of each line on hover.
      const uniq = (f) => [...new Set(def.series.map((s) => f[s.key]).filter(Boolean))];
      const source = el('p', 'source', uniq(state.metric).join(' · '));
      source.title = uniq(state.source).join('\n');
      card.append(svg, legend, source);
      root.append(card);
      charts.push({ def, svg, legend });
    }
    window.addEventListener('resize', () => render());
  }

  function drawChart({ def, svg, legend }) {
    const W = svg.clientWidth || 400, H = svg.clientHeight || 150;
    const L = 48, R = 6, T = 6, B = 18; // margins for the axes' labels
    const pw = W - L - R, ph = H - T - B;
    const tEnd = last(state.t), tStart = tEnd - state.history * 1000;
    const x = (t) => L + ((t - tStart) / (tEnd - tStart)) * pw;
    svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
    svg.replaceChildren();
    legend.replaceChildren();

    const shown = def.series.filter((s) => !s.legendOnly &&
      (!s.optional || (state.cols[s.key] || []).some((v) => v !== null && v > 0)));
    let top = 0;
    for (const s of shown) for (const v of state.cols[s.key]) if (v !== null && v > top) top = v;
    const yMax = def.max ||
      (def.unit === 'bytes' ? 2 ** Math.ceil(Math.log2(Math.max(top, 1024))) : niceCeil(top, def.unit === 's' ? 0.001 : 1));
    const y = (v) => T + ph - (Math.min(v, yMax) / yMax) * ph;

    // Grid and axes.
    for (const f of [0, 0.5, 1]) {
      const gy = T + ph - f * ph;
      svg.append(svgEl('line', { class: 'grid', x1: L, x2: W - R, y1: gy, y2: gy }));
      if (def.unit === 'updown' && f === 0.5) continue;
      const label = svgEl('text', { class: 'axis', x: L - 4, y: gy + 3, 'text-anchor': 'end' });
      label.textContent = fmt(f * yMax, def.unit);
      svg.append(label);
    }
    for (let m = 0; m * 60 <= state.history; m++) {
      const gx = x(tEnd - m * 60000);
      const label = svgEl('text', { class: 'axis', x: gx, y: H - 4, 'text-anchor': m === 0 ? 'end' : 'middle' });
      label.textContent = m === 0 ? 'now' : `−${m} min`;
      svg.append(label);
    }

    // Where the band's series is 1 (overloaded): a shaded stretch behind the lines.
    if (def.band) {
      const b = state.cols[def.band] || [];
      for (let i = 0; i < b.length; i++) {
        if (b[i] !== 1) continue;
        const x0 = x(state.t[i] - state.interval * 1000), x1 = x(state.t[i]);
        svg.append(svgEl('rect', { class: 'area c-red', x: Math.max(L, x0), y: T, width: Math.max(0, x1 - Math.max(L, x0)), height: ph }));
      }
    }

    // One path per series, broken where a value is unknown or samples are missing.
    const gap = state.interval * 1000 * 2.5;
    for (const s of shown) {
      const col = state.cols[s.key];
      let d = '', area = '', points = 0, runStart = -1, prevT = -Infinity;
      const closeRun = (end) => {
        if (runStart >= 0 && s.fill) area += `L${x(state.t[end]).toFixed(1)},${y(0).toFixed(1)}Z`;
        runStart = -1;
      };
      for (let i = 0; i < col.length; i++) {
        const v = col[i], t = state.t[i];
        if (v === null || t < tStart) { closeRun(i - 1); continue; }
        if (runStart >= 0 && t - prevT > gap) closeRun(i - 1);
        const px = x(t).toFixed(1), py = y(v).toFixed(1);
        if (runStart < 0) {
          d += `M${px},${py}`;
          if (s.fill) area += `M${px},${y(0).toFixed(1)}L${px},${py}`;
          runStart = i;
        } else {
          d += `L${px},${py}`;
          if (s.fill) area += `L${px},${py}`;
        }
        points++;
        prevT = t;
      }
      closeRun(col.length - 1);
      if (area) svg.append(svgEl('path', { class: `area c-${s.color}`, d: area }));
      svg.append(svgEl('path', { class: `line c-${s.color}`, d, 'data-series': s.key, 'data-points': points }));
    }
    if (!shown.length || !state.t.length) {
      const t = svgEl('text', { class: 'empty', x: L + pw / 2, y: T + ph / 2, 'text-anchor': 'middle' });
      t.textContent = 'waiting for samples…';
      svg.append(t);
    }

    // The legend: each series drawn, with its latest value.
    for (const s of def.series) {
      if (!s.legendOnly && !shown.includes(s)) continue;
      const li = el('li', `c-${s.color}`);
      if (!s.legendOnly) li.append(el('span', 'swatch'));
      li.append(el('span', '', s.label), el('span', 'val', fmt(latest(s.key), s.unit || def.unit)));
      legend.append(li);
    }
  }

  function setPill(id, cls, text) {
    const p = $(id);
    p.className = 'pill ' + cls;
    p.textContent = text;
  }

  function render() {
    const stale = state.failed || Date.now() - state.okAt > 5000 + state.interval * 2000;
    setPill('pill-live', stale ? 'bad' : 'ok', stale ? 'service not answering' : 'live');
    if (!state.t.length) return;
    for (const c of charts) drawChart(c);
    for (const [tile, key] of Object.entries(TILES)) $('tile-' + tile).textContent = total(latest(key));
    const up = latest('database_up');
    setPill('pill-database', up === 1 ? 'ok' : 'bad', up === 1 ? 'Postgres answers' : 'Postgres not answering: callbacks go to the spool');
    const over = latest('overloaded');
    setPill('pill-overload', over === 1 ? 'bad' : 'ok', over === 1 ? 'overloaded: dropping work' : 'not overloaded');
    const segs = latest('spool_segments'), bytes = latest('spool_bytes');
    setPill('pill-spool', segs > 0 ? 'warn' : 'ok', segs > 0 ? `spool: ${segs} segments, ${fmt(bytes, 'bytes')}` : 'spool empty');
  }

  // The poll: the samples after the last one seen, once an interval, while the page is visible.
  async function poll() {
    try {
      const after = state.t.length ? `?after=${last(state.t)}` : '';
      const r = await fetch('console/series' + after, { cache: 'no-store' });
      if (!r.ok) throw new Error(`HTTP ${r.status}`);
      ingest(await r.json());
      state.okAt = Date.now();
      state.failed = false;
    } catch (e) {
      state.failed = true;
    }
    render();
  }

  // Ids are int64: beyond 2^53 a JavaScript number loses digits, so read them as text.
  const parseObjects = (text) => JSON.parse(text.replace(/("id"\s*:\s*)(\d+)/g, '$1"$2"'));
  function ago(ts) {
    const s = Math.max(0, (Date.now() - Date.parse(ts)) / 1000);
    return s < 10 ? `${s.toFixed(1)} s ago` : s < 120 ? `${Math.round(s)} s ago` : `${Math.round(s / 60)} min ago`;
  }

  // The newest objects, every few seconds.
  async function newest() {
    try {
      const r = await fetch('objects?order=newest&limit=15', { cache: 'no-store' });
      if (r.ok) {
        const rows = parseObjects(await r.text()).objects;
        const body = $('newest');
        body.replaceChildren();
        for (const o of rows) {
          const tr = el('tr');
          const a = el('a', '', o.id);
          a.addEventListener('click', () => { $('lookup-id').value = o.id; lookUp(); });
          const tdID = el('td');
          tdID.append(a);
          tr.append(tdID, el('td', '', ago(o.last_seen)));
          body.append(tr);
        }
        if (!rows.length) {
          const tr = el('tr');
          const td = el('td', '', 'none online');
          td.colSpan = 2;
          tr.append(td);
          body.append(tr);
        }
      }
    } catch (e) {
      // The series poll shows that the service does not answer.
    }
  }

  // One object, through the read API.
  async function lookUp() {
    const out = $('lookup-result');
    const show = (cls, text) => { out.className = 'result ' + cls; out.textContent = text; };
    const id = $('lookup-id').value.trim();
    if (!/^\d{1,19}$/.test(id)) {
      show('bad', 'An id is a whole number, 0 to 9223372036854775807.');
      return;
    }
    show('', `looking ${id} up…`);
    try {
      const r = await fetch('objects/' + id, { cache: 'no-store' });
      const text = await r.text();
      if (r.status === 200) {
        const o = parseObjects(text);
        show('ok', `${o.id} is online: last seen ${ago(o.last_seen)} (${new Date(o.last_seen).toLocaleTimeString()})`);
      } else if (r.status === 404) {
        show('missing', `${id}: not found. It is not online: offline, never named, or not named within the window.`);
      } else {
        let msg = `HTTP ${r.status}`;
        try { msg = JSON.parse(text).error; } catch (e) { /* not JSON */ }
        show('bad', `${id}: ${msg}`);
      }
    } catch (e) {
      show('bad', 'The service did not answer.');
    }
  }

  // every runs f now and then every period() ms while the page is visible: a hidden
  // tab asks the service for nothing until it is shown again.
  function every(f, period) {
    let paused = false;
    const run = async () => {
      await f();
      setTimeout(() => { if (document.hidden) paused = true; else run(); }, period());
    };
    document.addEventListener('visibilitychange', () => {
      if (!document.hidden && paused) { paused = false; run(); }
    });
    run();
  }

  $('lookup').addEventListener('submit', (ev) => { ev.preventDefault(); lookUp(); });
  every(poll, () => state.interval * 1000);
  every(newest, () => 5000);
})();
