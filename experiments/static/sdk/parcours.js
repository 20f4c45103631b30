/*! parcours.js 1.0.0 — Parcours browser SDK (SPEC §10). No dependencies, ES2017. */
(function (root) {
  "use strict";

  var VERSION = "1.0.0";
  var QUEUE_PREFIX = "parcours:q:";  // one stored queue per page load, adopted by the next load
  var UNIT_KEY = "parcours:unit";
  var USER_KEY = "parcours:user";    // "<unit id> <user id>": the link this browser has sent
  var PAGES_KEY = "parcours:pages";
  var CONVERTED_KEY = "parcours:converted";  // this tab's session tracked a conversion
  var MAX_STORED = 1000;             // oldest items go first when a long outage fills storage
  var MAX_BATCH = 500;               // well under the API's 1000 events / 1 MiB per request
  var BEACON_BYTES = 60000;          // sendBeacon and keepalive fetch share a 64 KiB budget
  var TIMEOUT_MS = 15000;
  var FRICTION = {
    error: true, rageClick: true, deadClick: true, formError: true, backNavigation: true,
    abandonment: true, slowStep: true, bounce: true,
    rageClickCount: 3, rageClickMs: 700, rageClickRadiusPx: 30, deadClickMs: 1000,
    slowStepMs: 60000, bounceMs: 10000, navigationGraceMs: 2000, maxErrors: 10
  };
  var INTERACTIVE = "a,button,input,select,textarea,label,summary,details,option,video,audio," +
    "[role=button],[role=link],[role=checkbox],[role=tab],[role=menuitem],[onclick]," +
    "[tabindex],[contenteditable]";

  function on(target, type, fn, capture) {
    if (target && target.addEventListener) target.addEventListener(type, fn, !!capture);
  }

  // Storage can be disabled or full (private mode, quota): the SDK then keeps working in memory.
  function storage(name, fn) {
    try { return fn(root[name]); } catch (e) { return undefined; }
  }

  function uuid() {
    var c = root.crypto;
    if (c && c.randomUUID) return c.randomUUID();
    var b = new Uint8Array(16);
    if (c && c.getRandomValues) c.getRandomValues(b);
    else for (var i = 0; i < 16; i++) b[i] = Math.random() * 256;
    b[6] = (b[6] & 15) | 64;
    b[8] = (b[8] & 63) | 128;
    var h = Array.prototype.map.call(b, function (x) { return (x + 256).toString(16).slice(1); })
      .join("");
    return [h.slice(0, 8), h.slice(8, 12), h.slice(12, 16), h.slice(16, 20), h.slice(20)].join("-");
  }

  // At most n UTF-16 units, never half of a pair: a lone surrogate is not Unicode.
  function clip(value, n) {
    if (value == null) return null;
    var s = String(value).slice(0, n || 300);
    return /[\ud800-\udbff]$/.test(s) ? s.slice(0, -1) : s;
  }

  function describe(el) {
    if (!el || !el.tagName) return null;
    var s = el.tagName.toLowerCase() + (el.id ? "#" + el.id : "");
    if (typeof el.className === "string" && el.className.trim()) {
      s += "." + el.className.trim().split(/\s+/)[0];
    }
    return clip(s, 100);
  }

  function warn(message) {
    try { console.warn("parcours: " + message); } catch (e) { /* no console: nothing to do */ }
  }

  function now() {
    return new Date().toISOString();
  }

  function retryable(status) {
    return status === 0 || status === 408 || status === 429 || status >= 500;
  }

  class Client {
    constructor(o) {
      if (!o || !o.clientKey) throw new Error("Parcours.init needs a clientKey");
      this.endpoint = String(o.endpoint || "").replace(/\/+$/, "");
      this.clientKey = o.clientKey;
      this.unitId = String(o.unitId || anonymousUnit());
      this.attributes = o.attributes || {};
      this.experiments = o.experiments || null;
      this.journey = o.journey || null;
      this.flushIntervalMs = o.flushIntervalMs || 2000;
      this.batchSize = o.batchSize || 20;
      this.onEvent = o.onEvent || null;
      this.currentStep = null;
      this.stepsSeen = 0;
      this.converted = !!storage("sessionStorage", function (s) {
        return s.getItem(CONVERTED_KEY);
      });
      this.startedAt = Date.now();
      this.queue = [];
      this.failures = 0;
      this.retryAt = 0;
      this.sending = null;
      this.exposureRtt = 0;
      this.page = null;
      this.more = null;
      this.exposed = {};
      this.storeKey = QUEUE_PREFIX + uuid();
      this.userId = null;
      var linked = storage("localStorage", function (s) { return s.getItem(USER_KEY); }) || "";
      if (linked.indexOf(this.unitId + " ") === 0) this.userId = linked.slice(this.unitId.length + 1);
      this.adopt();
      if (o.userId) this.identify(o.userId);
      var self = this;
      this.timer = setInterval(function () { self.flush(); }, this.flushIntervalMs);
      on(root, "pagehide", function () { self.leave(); });
      on(root, "online", function () { self.retryAt = 0; self.flush(); });
      this.detectors = o.autoFriction ? autoFriction(this, o.autoFriction) : null;
    }

    // ---- assignment -------------------------------------------------------------------------

    variant(key) {
      var self = this;
      return this.assignment(key).then(function (a) {
        var result = a && a.variant != null
          ? { variant: a.variant, payload: a.payload || {}, inExperiment: !!a.in_experiment }
          : { variant: null, payload: {}, inExperiment: false };
        if (result.inExperiment) self.expose(key);
        return result;
      });
    }

    assignment(key) {
      var self = this;
      if (!this.page) {
        // One request for the whole page: the configured experiments, or every running one.
        this.page = this.assign(this.experiments).then(function (m) {
          if (!m) self.page = null;
          return m;
        });
      }
      return this.page.then(function (m) {
        if (!m) return null;
        return key in m ? m[key] : self.assignMore(key);
      });
    }

    assignMore(key) {
      var self = this;
      if (!this.more) {
        var batch = { keys: [] };
        batch.done = new Promise(function (r) { setTimeout(r, 0); }).then(function () {
          self.more = null;
          return self.assign(batch.keys);
        }).then(function (m) {
          if (m && self.page) self.page.then(function (p) { if (p) Object.assign(p, m); });
          return m || {};
        });
        this.more = batch;
      }
      this.more.keys.push(key);
      return this.more.done.then(function (m) { return m[key] || null; });
    }

    assign(keys) {
      var body = { unit_id: this.unitId, attributes: this.attributes, track: false };
      if (this.userId) body.user_id = this.userId;
      if (keys) body.experiments = keys;
      return this.post("/api/v1/assign", body).then(function (r) {
        return r.ok ? r.json() : null;
      }).then(function (res) {
        if (!res) return null;
        var m = {};
        (res.assignments || []).forEach(function (a) { m[a.experiment] = a; });
        return m;
      }, function () { return null; });
    }

    expose(key) {
      if (this.exposed[key]) return;
      this.exposed[key] = true;
      // When it was shown, on this clock: the server corrects it by the request's sent_at.
      // With the user id only if it was known when the variant was read (see identify).
      var b = { experiment: key, unit_id: this.unitId, occurred_at: now() };
      if (this.userId) b.user_id = this.userId;
      this.push({ id: uuid(), k: "x", b: b });
      // Sent right away, yet after this task: the events the page tracks on reading its
      // variant go in the same flush, behind the exposure, so none lands before it.
      var self = this;
      setTimeout(function () { self.flush(); }, 0);
    }

    // Links this browser's anonymous id to a customer id (SPEC §14), once per pair; later
    // assignments and exposures carry user_id, so the customer keeps the variant everywhere.
    identify(userId) {
      if (userId == null || userId === "") {
        warn("identify() dropped: a user id is required");
        return;
      }
      var id = String(userId);
      if (id === this.userId) return;
      this.userId = id;
      var pair = this.unitId + " " + id;
      storage("localStorage", function (s) { s.setItem(USER_KEY, pair); });
      this.push({ id: uuid(), k: "i", b: { anonymous_id: this.unitId, user_id: id, occurred_at: now() } });
      var self = this;
      setTimeout(function () { self.flush(); }, 0);
    }

    // ---- events -----------------------------------------------------------------------------

    step(name, o) {
      this.currentStep = String(name);
      this.stepsSeen += 1;
      if (this.detectors) this.detectors.step(this.currentStep);
      return this.event("step", name, Object.assign({}, o, { step: this.currentStep }));
    }

    track(name, o) {
      o = o || {};
      var id = this.event(o.type || "conversion", name, o);
      if (id && (!o.type || o.type === "conversion")) {
        // No bounce or abandonment after a conversion, on this page or a later one.
        this.converted = true;
        storage("sessionStorage", function (s) { s.setItem(CONVERTED_KEY, "1"); });
      }
      return id;
    }

    friction(kind, o) {
      return this.event("friction", kind, Object.assign({}, o, { friction_kind: kind }));
    }

    nps(score, o) {
      if (!(Number.isInteger(score) && score >= 0 && score <= 10)) {
        warn("nps(" + score + ") dropped: the score must be an integer from 0 to 10");
        return null;
      }
      return this.event("nps", "nps", Object.assign({}, o, { value: score }));
    }

    // Never throws into the host page: a bad event is dropped with a console warning.
    event(type, name, o) {
      try {
        return this.record(type, name, o || {});
      } catch (x) {
        warn(type + " '" + name + "' dropped: " + (x && x.message));
        return null;
      }
    }

    record(type, name, o) {
      var e = { event_id: uuid(), unit_id: this.unitId, type: type, name: String(name),
        occurred_at: now() };
      var step = o.step !== undefined ? o.step : this.currentStep;
      if (step) e.step = String(step);
      if (o.friction_kind) e.friction_kind = o.friction_kind;
      if (o.value != null) {
        e.value = typeof o.value === "number" || typeof o.value === "string" ? Number(o.value) : NaN;
        if (!isFinite(e.value) || o.value === "") {
          warn(type + " '" + name + "' dropped: value " + JSON.stringify(o.value) +
            " is not a number");
          return null;
        }
      }
      if (o.properties) e.properties = JSON.parse(JSON.stringify(o.properties));
      this.push({ id: e.event_id, k: "e", b: e });
      if (this.onEvent) try { this.onEvent(e); } catch (x) { /* a hook never breaks tracking */ }
      if (this.queue.length >= this.batchSize) this.flush();
      return e.event_id;
    }

    // ---- queue and transport ----------------------------------------------------------------

    push(item) {
      this.queue.push(item);
      if (this.queue.length > MAX_STORED) this.queue.splice(0, this.queue.length - MAX_STORED);
      this.save();
    }

    save() {
      var key = this.storeKey;
      var queue = this.queue;
      storage("localStorage", function (s) {
        if (queue.length) s.setItem(key, JSON.stringify(queue));
        else s.removeItem(key);
      });
    }

    adopt() {
      // Items a previous page load (or tab) could not confirm: resend them, the server dedupes.
      var self = this;
      var seen = {};
      storage("localStorage", function (s) {
        var keys = [];
        for (var i = 0; i < s.length; i++) {
          var k = s.key(i);
          if (k && k.indexOf(QUEUE_PREFIX) === 0) keys.push(k);
        }
        keys.forEach(function (k) {
          var items;
          try { items = JSON.parse(s.getItem(k)); } catch (e) { items = null; }
          s.removeItem(k);
          (Array.isArray(items) ? items : []).forEach(function (it) {
            if (it && it.id && it.b && !seen[it.id]) { seen[it.id] = true; self.queue.push(it); }
          });
        });
      });
      this.save();
      if (this.queue.length) setTimeout(function () { self.flush(); }, 0);
    }

    flush() {
      if (this.sending) return this.sending;
      if (!this.queue.length || Date.now() < this.retryAt) return Promise.resolve();
      var self = this;
      var items = this.queue.slice(0, MAX_BATCH);
      var events = items.filter(function (i) { return i.k === "e"; });
      // One sent_at for the exposures and the events after them: both are shifted by the
      // same clock skew, and the events' later receipt keeps them after their exposure.
      var sent = this.sentAt();
      var sends = items.filter(function (i) { return i.k === "x"; }).map(function (i) {
        return self.send("/api/v1/exposures", Object.assign({}, i.b, { sent_at: sent }), [i]);
      });
      var links = items.filter(function (i) { return i.k === "i"; });
      if (links.length) {
        sends.push(self.send("/api/v1/identify",
          { links: links.map(function (i) { return i.b; }) }, links));
      }
      this.sending = Promise.all(sends).then(function (results) {
        if (!events.length) return results;
        return self.send("/api/v1/events",
          { events: events.map(function (i) { return i.b; }), sent_at: sent }, events)
          .then(function (ok) { return results.concat([ok]); });
      }).then(function (results) {
        self.sending = null;
        if (results.indexOf(false) >= 0) {
          self.failures += 1;
          self.retryAt = Date.now() + Math.min(60000, self.flushIntervalMs * Math.pow(2, self.failures));
        } else {
          self.failures = 0;
          self.retryAt = 0;
          if (self.queue.length >= self.batchSize) return self.flush();
        }
      });
      return this.sending;
    }

    // The send time a request declares. The server corrects a request's times by its
    // (received − sent_at), which also carries that request's transit time: an exposure
    // request held up on the way is dated later than the same page's later, faster batches
    // would date their events, and those events would seem to come before it. Declaring
    // each batch sent earlier by the slowest exposure round trip seen (which bounds that
    // exposure's transit) keeps every event after its exposure; it moves events later by
    // at most that round trip, never past their receipt.
    sentAt() {
      return new Date(Date.now() - this.exposureRtt).toISOString();
    }

    send(path, body, items) {
      var self = this;
      var started = Date.now();
      return this.post(path, body).then(function (r) {
        if (body.experiment) self.exposureRtt = Math.max(self.exposureRtt, Date.now() - started);
        return r.status === 200 && body.events ? r.json().then(function (res) {
          (res.rejected || []).forEach(function (x) {
            var e = body.events[x.index] || {};
            warn("event '" + e.name + "' rejected: " + (x.error && x.error.message));
          });
          return 200;
        }, function () { return 200; }) : r.status;
      }, function () { return 0; })
        .then(function (status) {
          if (retryable(status)) return false;
          if (status >= 400) warn(path + " refused with HTTP " + status);
          var done = {};
          items.forEach(function (i) { done[i.id] = true; });
          self.queue = self.queue.filter(function (i) { return !done[i.id]; });
          self.save();
          return true;
        });
    }

    post(path, body, keepalive) {
      var ctl = root.AbortController ? new AbortController() : null;
      var timer = ctl && setTimeout(function () { ctl.abort(); }, TIMEOUT_MS);
      var done = function () { clearTimeout(timer); };
      return root.fetch(this.endpoint + path, {
        method: "POST", keepalive: !!keepalive, credentials: "omit",
        headers: { "Content-Type": "application/json", Authorization: "Bearer " + this.clientKey },
        body: JSON.stringify(body), signal: ctl ? ctl.signal : undefined
      }).then(function (r) { done(); return r; }, function (e) { done(); throw e; });
    }

    leave() {
      if (this.detectors) this.detectors.leave();
      this.beacon();
    }

    beacon() {
      // sendBeacon cannot carry Authorization: POST /api/v1/events takes the public client key
      // as ?key= for text/plain beacons. Items stay stored until a later page load confirms them.
      var sent = this.sentAt();
      var self = this;
      var swallow = function () {};
      var links = [];
      this.queue.forEach(function (i) {
        if (i.k === "x") {
          self.post("/api/v1/exposures", Object.assign({}, i.b, { sent_at: sent }), true)
            .catch(swallow);
        } else if (i.k === "i") {
          links.push(i.b);
        }
      });
      if (links.length) self.post("/api/v1/identify", { links: links }, true).catch(swallow);
      var events = this.queue.filter(function (i) { return i.k === "e"; }).slice(0, MAX_BATCH)
        .map(function (i) { return i.b; });
      var body = JSON.stringify({ events: events, sent_at: sent });
      while (body.length > BEACON_BYTES && events.length > 1) {
        events = events.slice(0, events.length >> 1);
        body = JSON.stringify({ events: events, sent_at: sent });
      }
      var nav = root.navigator;
      var url = this.endpoint + "/api/v1/events?key=" + encodeURIComponent(this.clientKey);
      if (events.length && !(nav && nav.sendBeacon && nav.sendBeacon(url, body))) {
        this.post("/api/v1/events", JSON.parse(body), true).catch(swallow);
      }
    }
  }

  function anonymousUnit() {
    var id = storage("localStorage", function (s) { return s.getItem(UNIT_KEY); });
    if (!id) {
      id = uuid();
      storage("localStorage", function (s) { s.setItem(UNIT_KEY, id); });
    }
    return id;
  }

  // ---- automatic friction capture ---------------------------------------------------------

  function autoFriction(p, options) {
    var c = Object.assign({}, FRICTION, options === true ? {} : options);
    var doc = root.document;
    var clicks = [];
    var rageUntil = 0;
    var deadPending = false;
    var errors = 0;
    var slowTimer = null;
    var lastNavigation = 0;
    var invalid = null;
    var left = false;
    var pages = storage("sessionStorage", function (s) {
      var n = (parseInt(s.getItem(PAGES_KEY), 10) || 0) + 1;
      s.setItem(PAGES_KEY, String(n));
      return n;
    }) || 1;

    function report(kind, properties, step, value) {
      var props = Object.assign({ path: root.location.pathname }, properties);
      p.friction(kind, { properties: props, step: step === undefined ? p.currentStep : step,
        value: value });
    }

    function threshold(step) {
      var t = c.slowStepMs;
      if (t && typeof t === "object") return step in t ? t[step] : t["*"];
      return t;
    }

    if (c.error) {
      on(root, "error", function (e) {
        if (errors++ < c.maxErrors) {
          report("error", { message: clip(e.message), source: clip(e.filename), line: e.lineno });
        }
      });
      on(root, "unhandledrejection", function (e) {
        var r = e.reason;
        if (errors++ < c.maxErrors) {
          report("error", { message: clip(r && r.message ? r.message : r), rejection: true });
        }
      });
    }

    on(doc, "click", function (e) {
      var now = Date.now();
      var t = e.target;
      var link = t && t.closest ? t.closest("a[href]") : null;
      if (link && link.origin === root.location.origin && link.target !== "_blank") {
        lastNavigation = now;
      }
      if (c.rageClick) rage(e, now);
      if (c.deadClick) dead(t);
    }, true);

    function rage(e, now) {
      if (now < rageUntil) { rageUntil = now + c.rageClickMs; return; }  // same burst
      clicks = clicks.filter(function (k) {
        return now - k.t <= c.rageClickMs &&
          Math.hypot(k.x - e.clientX, k.y - e.clientY) <= c.rageClickRadiusPx;
      });
      clicks.push({ t: now, x: e.clientX, y: e.clientY });
      if (clicks.length >= c.rageClickCount) {
        report("rage_click", { target: describe(e.target), clicks: clicks.length });
        clicks = [];
        rageUntil = now + c.rageClickMs;
      }
    }

    function dead(t) {
      if (deadPending || !t || !t.closest || t.closest(INTERACTIVE)) return;
      if (t === doc.body || t === doc.documentElement) return;
      var sel = root.getSelection && root.getSelection();
      if (sel && String(sel)) return;  // selecting text is not a failed click
      var changed = false;
      var href = root.location.href;
      var step = p.currentStep;
      var observer = new MutationObserver(function () { changed = true; });
      observer.observe(doc, { subtree: true, childList: true, attributes: true,
        characterData: true });
      deadPending = true;
      setTimeout(function () {
        observer.disconnect();
        deadPending = false;
        if (!changed && root.location.href === href) {
          report("dead_click", { target: describe(t) }, step);
        }
      }, c.deadClickMs);
    }

    if (c.formError) {
      // `invalid` fires once per failing control, on submit and on checkValidity(): one event
      // per form and attempt.
      on(doc, "invalid", function (e) {
        var el = e.target;
        if (!invalid) {
          var form = el.form;
          invalid = { form: form ? form.id || form.getAttribute("name") || "form" : null,
            fields: [] };
          setTimeout(function () { report("form_error", invalid); invalid = null; }, 0);
        }
        var field = el.name || el.id || el.type;
        if (invalid.fields.indexOf(field) < 0) invalid.fields.push(field);
      }, true);
    }
    on(doc, "submit", function (e) {
      var form = e.target;
      if (c.formError && form.noValidate && form.checkValidity) form.checkValidity();
      lastNavigation = Date.now();
    }, true);

    if (c.backNavigation) {
      var nav = root.navigation;
      if (nav && nav.addEventListener) {
        // The Navigation API tells back from forward; plain popstate cannot.
        on(nav, "currententrychange", function (e) {
          if (e.navigationType === "traverse" && e.from && nav.currentEntry.index < e.from.index) {
            report("back_navigation", {});
          }
        });
      } else {
        on(root, "popstate", function () { report("back_navigation", {}); });
      }
    }

    return {
      step: function (name) {
        clearTimeout(slowTimer);
        var ms = c.slowStep ? threshold(name) : 0;
        if (ms > 0) {
          slowTimer = setTimeout(function () {
            if (p.currentStep === name) report("slow_step", { threshold_ms: ms }, name, ms);
          }, ms);
        }
      },
      leave: function () {
        if (left) return;
        left = true;
        var now = Date.now();
        var moving = now - lastNavigation < c.navigationGraceMs;  // in-site link or form
        var step = p.currentStep;
        var last = p.journey && p.journey[p.journey.length - 1] === step;
        if (c.abandonment && step && !moving && !p.converted && !last) {
          report("abandonment", {}, step);
        }
        if (c.bounce && pages === 1 && p.stepsSeen <= 1 && !moving && !p.converted &&
            now - p.startedAt < c.bounceMs) {
          report("bounce", { duration_ms: now - p.startedAt }, undefined, now - p.startedAt);
        }
      }
    };
  }

  var Parcours = {
    version: VERSION,
    init: function (options) { return new Client(options); }
  };
  root.Parcours = Parcours;
  if (typeof module === "object" && module.exports) module.exports = Parcours;
})(typeof window !== "undefined" ? window : this);
