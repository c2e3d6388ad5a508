// lbd status page: polls /status.json, listens to /events (server-sent events) and keeps the
// DOM in step. Read-only. Every value from lbd (backend ids and zones come from etcd, so
// anyone who may register wrote them) reaches the page through textContent or a data-*
// attribute, never as markup; class names come only from the fixed lists below.
'use strict';
(function () {
  const POLL_MS = 2000;
  const HIDDEN_POLL_MS = 10000;
  const STALE_MS = 6000;
  const MAX_EVENTS = 200;
  const GONE_KEEP_MS = 5 * 60 * 1000; // a removed backend that still had connections
  const STATES = {
    up: 'up', slow_start: 'slow start', draining: 'draining', drained: 'drained',
    down: 'down', ejected: 'ejected', removed: 'removed', refused: 'refused',
    unresolved: 'unresolved',
  };
  const COLUMNS = [
    ['id', 'Backend', 'l'], ['state', 'State', 'l'], ['weight', 'Weight'],
    ['active', 'Active'], ['total', 'Total'], ['conn_rate', 'Conn/s'], ['byte_rate', 'Bytes/s'],
    ['bytes_in', 'In'], ['bytes_out', 'Out'], ['fails', 'Fails'], ['zone', 'Zone', 'l'],
    ['addr', 'Address', 'l'],
  ];

  const poolsEl = document.getElementById('pools');
  const eventsEl = document.getElementById('events');
  const noEventsEl = document.getElementById('no-events');
  const linkEl = document.getElementById('link');
  const summaryEl = document.getElementById('summary');
  const updatedEl = document.getElementById('updated');
  const largeEl = document.getElementById('large');

  const pools = new Map(); // pool name -> {section, tbody, meta}
  const rows = new Map(); // key -> {tr, cells, b, gone}
  const samples = new Map(); // key -> {t, total, bytes}: the previous snapshot, for rates
  let lastOk = 0;
  let polling = null;
  let pollSoon = null;
  let events = null;
  let eventsRetry = 1000;
  let eventsLive = false;
  let eventsLost = false;

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = String(text);
    return e;
  }

  function key(pool, id) { return pool + '\u0000' + id; }

  function stateClass(s) { return Object.prototype.hasOwnProperty.call(STATES, s) ? s : 'unknown'; }

  function num(v) { return typeof v === 'number' && isFinite(v) ? v : 0; }

  function count(v) { return num(v).toLocaleString('en-US'); }

  function bytes(v) {
    let n = num(v);
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i === 0 ? String(Math.round(n)) : n.toFixed(n < 10 ? 2 : n < 100 ? 1 : 0)) + ' ' + units[i];
  }

  function rate(v, unit) {
    if (v === null || v === undefined) return '–';
    return unit === 'B' ? bytes(v) + '/s' : (v < 10 ? v.toFixed(1) : Math.round(v).toLocaleString('en-US'));
  }

  function clock(ms) {
    const d = new Date(num(ms));
    return [d.getHours(), d.getMinutes(), d.getSeconds()].map((x) => String(x).padStart(2, '0')).join(':');
  }

  // ---- the link indicator ----

  function showLink() {
    const fresh = Date.now() - lastOk < STALE_MS;
    let state = 'offline';
    let text = 'lbd unreachable';
    if (fresh && eventsLive) { state = 'live'; text = 'live'; }
    else if (fresh) { state = 'polling'; text = 'polling (no event stream)'; }
    else if (!lastOk) { state = 'connecting'; text = 'connecting…'; }
    linkEl.dataset.link = state;
    linkEl.textContent = text;
  }

  // ---- pools and backends ----

  function poolSection(p) {
    let ps = pools.get(p.name);
    if (ps) return ps;
    const section = el('section', 'pool');
    section.dataset.pool = p.name;
    const head = el('div', 'pool-head');
    const h2 = el('h2', null, p.name);
    const panic = el('span', 'badge panic', 'panic: spreading over every backend');
    panic.hidden = true;
    const spill = el('span', 'badge panic', 'zone spill-over: too few local backends');
    spill.hidden = true;
    const queue = el('span', 'badge queue');
    queue.hidden = true;
    const meta = el('div', 'pool-meta');
    head.append(h2, panic, spill, queue, meta);
    const wrap = el('div', 'table-wrap');
    const table = el('table');
    const thead = el('thead');
    const hr = el('tr');
    for (const [, title, align] of COLUMNS) {
      const th = el('th', align || null, title);
      th.scope = 'col';
      hr.append(th);
    }
    thead.append(hr);
    const tbody = el('tbody');
    table.append(thead, tbody);
    wrap.append(table);
    section.append(head, wrap);
    ps = { section, tbody, meta, panic, spill, queue };
    pools.set(p.name, ps);
    return ps;
  }

  function metaItem(label, value) {
    const s = el('span', null, label + ' ');
    s.append(el('b', null, value));
    return s;
  }

  function backendRow(b) {
    const k = key(b.pool, b.id);
    let r = rows.get(k);
    if (r) return r;
    const tr = el('tr');
    tr.dataset.pool = b.pool;
    tr.dataset.id = b.id;
    const cells = {};
    for (const [name, title, align] of COLUMNS) {
      const td = el('td', (align || '') + ' ' + name);
      td.dataset.label = title;
      cells[name] = td;
      tr.append(td);
    }
    r = { tr, cells, b: null, gone: 0 };
    rows.set(k, r);
    return r;
  }

  // Fills a row from a backend object (as /status.json or an event carries it).
  function fillRow(r, b, state, rates) {
    const c = r.cells;
    r.b = b;
    c.id.textContent = b.id;
    const badge = el('span', 'badge st-' + stateClass(state), STATES[stateClass(state)] || state);
    c.state.dataset.state = state;
    c.state.replaceChildren(badge);
    if (state === 'removed' && num(b.active_connections) > 0)
      c.state.append(el('span', 'note', count(b.active_connections) + ' open when removed'));
    else if (b.health_override === 'up' || b.health_override === 'down')
      c.state.append(el('span', 'note', 'forced ' + b.health_override));
    else if (state === 'up' && b.health === 'unknown')
      c.state.append(el('span', 'note', 'not checked'));
    let w = String(num(b.effective_weight));
    if (b.weight_override !== null && b.weight_override !== undefined)
      w += ' / ' + num(b.weight_override) + ' set (' + num(b.weight) + ' registered)';
    else if (num(b.effective_weight) !== num(b.weight))
      w += ' / ' + num(b.weight);
    c.weight.textContent = w;
    c.weight.title = 'effective / registered weight';
    c.active.textContent = count(b.active_connections);
    c.total.textContent = count(b.total_connections);
    if (rates) {
      c.conn_rate.textContent = rate(rates.conn);
      c.byte_rate.textContent = rate(rates.bytes, 'B');
    }
    c.bytes_in.textContent = bytes(b.bytes_in);
    c.bytes_out.textContent = bytes(b.bytes_out);
    c.fails.textContent = count(b.connect_failures);
    c.zone.textContent = b.zone || '–';
    c.addr.textContent = b.addr;
    r.tr.classList.toggle('gone', state === 'removed');
  }

  function render(doc) {
    const now = Date.now();
    const seen = new Set();
    const byPool = new Map();
    for (const p of doc.pools || []) byPool.set(p.name, { p, list: [], rates: { conn: null, bytes: null }, panic: !!p.panic });

    for (const b of doc.backends || []) {
      const entry = byPool.get(b.pool);
      if (!entry) continue;
      const k = key(b.pool, b.id);
      seen.add(k);
      const bsum = num(b.bytes_in) + num(b.bytes_out);
      const prev = samples.get(k);
      let rates = { conn: null, bytes: null };
      if (prev && now > prev.t && num(b.total_connections) >= prev.total && bsum >= prev.bytes) {
        const dt = (now - prev.t) / 1000;
        rates = { conn: (num(b.total_connections) - prev.total) / dt, bytes: (bsum - prev.bytes) / dt };
        entry.rates.conn = (entry.rates.conn || 0) + rates.conn;
        entry.rates.bytes = (entry.rates.bytes || 0) + rates.bytes;
      }
      samples.set(k, { t: now, total: num(b.total_connections), bytes: bsum });
      const r = backendRow(b);
      r.gone = 0;
      fillRow(r, b, b.state, rates);
      entry.list.push(r);
    }

    // Backends gone from lbd: kept a while, greyed, when they still had connections.
    for (const [k, r] of rows) {
      if (seen.has(k)) continue;
      const had = r.b && num(r.b.active_connections) > 0;
      if (!r.gone && had) {
        r.gone = now;
        fillRow(r, r.b, 'removed', { conn: null, bytes: null });
      }
      if (!r.gone || now - r.gone > GONE_KEEP_MS || !byPool.has(r.tr.dataset.pool)) {
        r.tr.remove();
        rows.delete(k);
        samples.delete(k);
        continue;
      }
      byPool.get(r.tr.dataset.pool).list.push(r);
    }

    const loading = document.getElementById('loading');
    if (loading) loading.remove();
    let totals = { pools: 0, backends: 0, up: 0 };
    for (const { p, list, rates, panic } of byPool.values()) {
      const ps = poolSection(p);
      poolsEl.append(ps.section); // keeps --pool order
      ps.panic.hidden = !panic;
      ps.spill.hidden = p.zone_local !== false;
      // clients waiting for a backend slot: every eligible backend at max_conns
      ps.queue.hidden = !(num(p.queued) > 0);
      ps.queue.textContent = 'queue: ' + count(p.queued) + ' waiting for a slot';
      ps.queue.dataset.queued = String(num(p.queued));
      ps.meta.replaceChildren(
        metaItem('listen', p.listen), metaItem('algorithm', p.algorithm),
        metaItem('eligible', count(p.eligible) + ' of ' + count(p.backends)),
        metaItem('active', count(p.active_connections)), metaItem('total', count(p.total_connections)),
        metaItem('queued', count(p.queued)),
        metaItem('conn/s', rate(rates.conn)), metaItem('bytes/s', rate(rates.bytes, 'B')));
      list.sort((a, b) => (a.b.id < b.b.id ? -1 : a.b.id > b.b.id ? 1 : 0));
      for (const r of list) ps.tbody.append(r.tr);
      if (!list.length) {
        const tr = el('tr', 'empty');
        const td = el('td', 'l muted', 'no backend registered');
        td.colSpan = COLUMNS.length;
        tr.append(td);
        ps.tbody.replaceChildren(tr);
      } else {
        for (const e of ps.tbody.querySelectorAll('tr.empty')) e.remove();
      }
      totals.pools++;
      for (const r of list) {
        if (r.gone) continue;
        totals.backends++;
        if (r.b.state === 'up' || r.b.state === 'slow_start') totals.up++;
      }
    }
    for (const [name, ps] of pools) {
      if (!byPool.has(name)) { ps.section.remove(); pools.delete(name); }
    }
    const lbd = doc.lbd || {};
    summaryEl.textContent = 'v' + (lbd.version || '?') + (lbd.ready ? '' : ' (not ready)') + ' · ' +
      totals.pools + (totals.pools === 1 ? ' pool' : ' pools') + ' · ' +
      totals.up + ' of ' + totals.backends + ' backends up';
    updatedEl.textContent = 'updated ' + clock(now);
  }

  async function poll() {
    clearTimeout(polling);
    polling = null;
    try {
      const res = await fetch('/status.json', { cache: 'no-store' });
      if (!res.ok) throw new Error('HTTP ' + res.status);
      render(await res.json());
      lastOk = Date.now();
    } catch (e) {
      updatedEl.textContent = 'cannot reach lbd (' + (e && e.message ? e.message : 'error') + ')';
    }
    showLink();
    polling = setTimeout(poll, document.hidden ? HIDDEN_POLL_MS : POLL_MS);
  }

  function pollAfter(ms) {
    if (pollSoon) return;
    pollSoon = setTimeout(() => { pollSoon = null; poll(); }, ms);
  }

  // ---- events ----

  function addEventItem(li) {
    noEventsEl.hidden = true;
    eventsEl.prepend(li);
    while (eventsEl.children.length > MAX_EVENTS) eventsEl.lastElementChild.remove();
  }

  function onEvent(ev) {
    if (!ev || typeof ev !== 'object') return;
    const li = el('li');
    li.dataset.type = String(ev.type);
    li.dataset.pool = String(ev.pool || '');
    if (ev.id) li.dataset.id = String(ev.id);
    li.append(el('span', 'when', clock(ev.unix_ms)));
    li.append(el('span', 'what', String(ev.type).replace(/_/g, ' ')));
    li.append(el('span', 'who', ev.id ? ev.pool + '/' + ev.id : String(ev.pool)));
    if (ev.state) {
      li.append(' ');
      li.append(el('span', 'badge st-' + stateClass(ev.state), STATES[stateClass(ev.state)] || ev.state));
    }
    if (ev.detail) li.append(el('span', 'detail', ev.detail));
    addEventItem(li);

    // The row follows at once; the next poll brings the rest (counters, pool totals).
    if (ev.backend && ev.id && pools.has(ev.pool)) {
      const k = key(ev.pool, ev.id);
      const r = rows.get(k) || backendRow(ev.backend);
      if (ev.state === 'removed' && num(ev.backend.active_connections) > 0) r.gone = Date.now();
      fillRow(r, ev.backend, ev.state, null);
      if (!r.tr.isConnected) pools.get(ev.pool).tbody.append(r.tr);
    }
    pollAfter(250);
  }

  function connectEvents() {
    if (typeof EventSource === 'undefined') return;
    events = new EventSource('/events');
    events.onopen = () => {
      eventsRetry = 1000;
      if (eventsLost) {
        addEventItem(el('li', 'gap', 'event stream reconnected: events in between may be missing'));
        eventsLost = false;
        pollAfter(0);
      }
      eventsLive = true;
      showLink();
    };
    events.onmessage = (m) => {
      let ev;
      try { ev = JSON.parse(m.data); } catch (e) { return; }
      onEvent(ev);
    };
    events.onerror = () => {
      eventsLive = false;
      eventsLost = true;
      showLink();
      if (events.readyState === EventSource.CLOSED) { // refused (too many streams): back off
        events.close();
        setTimeout(connectEvents, eventsRetry);
        eventsRetry = Math.min(eventsRetry * 2, 30000);
      }
    };
  }

  // ---- large type, for a wall screen (?large or the Aa button; this browser only) ----

  function setLarge(on) {
    document.documentElement.classList.toggle('large', on);
    largeEl.setAttribute('aria-pressed', on ? 'true' : 'false');
    try { localStorage.setItem('lbd-status-large', on ? '1' : '0'); } catch (e) { /* private mode */ }
  }

  let large = /[?&#]large\b/.test(location.search + location.hash);
  try { large = large || localStorage.getItem('lbd-status-large') === '1'; } catch (e) { /* none */ }
  setLarge(large);
  largeEl.addEventListener('click', () => setLarge(!document.documentElement.classList.contains('large')));
  document.addEventListener('visibilitychange', () => { if (!document.hidden) pollAfter(0); });
  setInterval(showLink, 1000);

  poll();
  connectEvents();
})();
