// The demo shop: a one-page checkout journey driven by parcours.js (external file: the CSP
// forbids inline scripts). Configuration comes from data attributes on <body>.
(function () {
  "use strict";

  const cfg = document.body.dataset;
  const journey = cfg.journey.split(",");
  const $ = (selector) => document.querySelector(selector);
  let layout = "steps";

  const p = window.Parcours.init({
    endpoint: cfg.endpoint,
    clientKey: cfg.clientKey,
    experiments: [cfg.experiment],
    journey: journey,
    attributes: { device: window.innerWidth < 700 ? "mobile" : "desktop" },
    autoFriction: { slowStepMs: { payment: 30000, "*": 120000 } },
    onEvent: log,
  });

  function log(event) {
    const item = document.createElement("li");
    const detail = event.friction_kind ? "friction " + event.friction_kind : event.type + " " + event.name;
    item.textContent = detail + (event.step ? " @ " + event.step : "") +
      (event.value != null ? " = " + event.value : "");
    if (event.type === "friction") item.className = "friction";
    $("#log").prepend(item);
  }

  function sectionFor(step) {
    return $('section[data-step="' + step + '"][data-layout="' + layout + '"]') ||
      $('section[data-step="' + step + '"]:not([data-layout])');
  }

  function show(step, fromHistory) {
    document.querySelectorAll("main section").forEach((s) => { s.hidden = true; });
    sectionFor(step).hidden = false;
    if (!fromHistory) history.pushState({ step: step }, "", "#" + step);
    p.step(step);
  }

  document.addEventListener("click", (e) => {
    const go = e.target.closest("[data-go]");
    if (go) show(go.dataset.go);
    if (e.target.closest("[data-back]")) history.back();
  });
  window.addEventListener("popstate", (e) => show((e.state && e.state.step) || "landing", true));

  $("#address-form").addEventListener("submit", (e) => {
    e.preventDefault();
    show("payment");
  });

  $("#payment-form").addEventListener("submit", (e) => {
    e.preventDefault();
    if (!e.target.elements.holder.value.trim()) {
      // The "current" payment widget crashes without a cardholder name: an uncaught error.
      setTimeout(() => { throw new Error("payment widget: cardholder name missing"); }, 0);
      return;
    }
    purchase();
  });

  $("#one-page-payment").addEventListener("focusin", () => {
    if (p.currentStep === "checkout") p.step("payment");
  });
  $("#one-page-form").addEventListener("submit", (e) => {
    e.preventDefault();
    purchase();
  });

  function purchase() {
    show("confirmation");
    p.track("purchase", { value: 59.9, step: "confirmation" });
  }

  for (let score = 0; score <= 10; score++) {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = String(score);
    button.addEventListener("click", () => {
      p.nps(score, { step: "confirmation" });
      $("#nps").hidden = true;
      $("#nps-thanks").hidden = false;
    });
    $("#nps").append(button);
  }

  $("#new-visitor").addEventListener("click", () => {
    localStorage.removeItem("parcours:unit");
    sessionStorage.clear();
    location.replace(location.pathname);
  });

  $("#unit").textContent = p.unitId;
  p.variant(cfg.experiment).then((v) => {
    layout = v.payload.layout === "single" ? "single" : "steps";
    $("#variant").textContent = v.variant || "control (experiment not running: flask seed-demo)";
    document.body.dataset.variant = v.variant || "control";
    history.replaceState({ step: "landing" }, "", "#landing");
    show("landing", true);
  });
})();
