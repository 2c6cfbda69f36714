// Tierline board: live refresh of the overview, local times, print. No framework, no CDN.
"use strict";

function localTimes(root) {
  for (const el of root.querySelectorAll("time[data-local]")) {
    const at = new Date(el.getAttribute("datetime"));
    if (!isNaN(at)) {
      el.textContent = at.toLocaleString(undefined, {
        year: "numeric", month: "2-digit", day: "2-digit",
        hour: "2-digit", minute: "2-digit", timeZoneName: "short",
      });
    }
  }
}

function liveRefresh(region) {
  const url = region.getAttribute("data-live");
  const every = Math.max(1000, Number(region.getAttribute("data-refresh-ms")) || 3000);
  const status = document.getElementById("live-status");
  let busy = false;
  const timer = setInterval(async () => {
    if (busy || document.hidden) return;
    busy = true;
    try {
      const res = await fetch(url, { credentials: "same-origin", headers: { Accept: "text/html" } });
      if (!res.ok || res.redirected) {
        clearInterval(timer);  // signed out or session ended: stop asking
        if (status) status.textContent = "Live updates stopped: reload the page.";
        return;
      }
      const html = await res.text();
      if (html !== region.dataset.last) {
        // The first answer is shown too: a change made between the page's rendering and the
        // first tick would otherwise become the baseline and never appear.
        const first = region.dataset.last === undefined;
        region.dataset.last = html;
        region.innerHTML = html;
        localTimes(region);
        if (!first && status) status.textContent = "Updated " + new Date().toLocaleTimeString();
      }
    } catch (err) {
      // a network blip: try again at the next tick
    } finally {
      busy = false;
    }
  }, every);
}

document.addEventListener("DOMContentLoaded", () => {
  localTimes(document);
  const region = document.querySelector("[data-live]");
  if (region) liveRefresh(region);
  for (const button of document.querySelectorAll("[data-print]")) {
    button.addEventListener("click", () => window.print());
  }
});
