// The self-serve page: a signed-in customer's team's keys, on the page's own JSON routes.
// The host's session cookie goes with every request; every change also sends the page's CSRF
// token. A new key is shown once, in a dialog that closes only once its copy is confirmed, and
// is then wiped from the page.
"use strict";

(() => {
  const root = document.getElementById("ks-keys");
  if (!root) return;
  const $ = (id) => document.getElementById(id);
  const keysUrl = root.dataset.keysUrl;
  const csrfToken = root.dataset.csrfToken;
  const canWrite = root.dataset.canWrite === "true";
  const statusLine = $("ks-status");
  const errorBox = $("ks-error");
  const table = $("ks-table");
  const rows = table.querySelector("tbody");
  const more = $("ks-more");
  const dateFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium" });
  let nextCursor = null;
  let listing = 0; // each listing's number: an answer to an older one is dropped

  const FIELD_NAMES = { name: "name", description: "description", expires_at: "expiry date", scopes: "scopes" };

  // A refusal in words a customer can act on.
  function describe(status, problem) {
    if (status === 401) return "You are signed out. Sign in again, then come back to this page.";
    if (problem && problem.code === "CSRF_FAILED") return "This page has expired. Reload it and try again.";
    if (status === 404) return "This key no longer exists, or is not your team's.";
    if (status === 503) return "Keys cannot be reached right now. Try again in a moment.";
    if (status === 422 && problem && problem.errors) {
      const fields = Object.values(problem.errors).flatMap((byField) =>
        Object.entries(byField).map(([field, messages]) => {
          const text = Array.isArray(messages) ? messages.join(" ") : Object.values(messages).flat().join(" ");
          return `${FIELD_NAMES[field] || field}: ${text}`;
        }),
      );
      return `Please check: ${fields.join("; ")}`;
    }
    return (problem && problem.detail) || `Something went wrong (HTTP ${status}). Try again.`;
  }

  async function call(method, url, body) {
    const init = { method, headers: { Accept: "application/json" }, credentials: "same-origin", cache: "no-store" };
    if (method !== "GET") {
      init.headers["Content-Type"] = "application/json";
      init.headers["X-CSRFToken"] = csrfToken;
      init.body = JSON.stringify(body || {});
    }
    let response;
    try {
      response = await fetch(url, init);
    } catch {
      throw new Error("The server could not be reached. Check your connection and try again.");
    }
    const answer = await response.json().catch(() => null);
    if (!response.ok) throw new Error(describe(response.status, answer));
    return answer;
  }

  const keyUrl = (keyId, action) => `${keysUrl}/${encodeURIComponent(keyId)}/${action}`;
  const team = () => $("ks-team").value;

  function element(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = text;
    if (className) node.className = className;
    return node;
  }

  function timeCell(iso, none) {
    if (!iso) return element("span", none, "ks-muted");
    const node = element("time", dateFormat.format(new Date(iso)));
    node.dateTime = iso;
    node.title = new Date(iso).toLocaleString();
    return node;
  }

  // The last 7 days as bars: valid uses, and refused ones on top in another colour.
  function useChart(days) {
    const valid = days.reduce((sum, day) => sum + day.valid, 0);
    const refused = days.reduce((sum, day) => sum + day.refused, 0);
    const wrap = element("span", null, "ks-use");
    const svgNs = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(svgNs, "svg");
    svg.setAttribute("viewBox", "0 0 70 20");
    svg.setAttribute("width", "70");
    svg.setAttribute("height", "20");
    svg.setAttribute("aria-hidden", "true");
    const top = Math.max(1, ...days.map((day) => day.valid + day.refused));
    days.forEach((day, index) => {
      let y = 20;
      if (!day.valid && !day.refused) {
        const none = document.createElementNS(svgNs, "rect");
        for (const [name, value] of [["x", index * 10 + 1], ["y", 19], ["width", 8], ["height", 1]]) {
          none.setAttribute(name, String(value));
        }
        none.setAttribute("class", "ks-bar-none");
        svg.append(none);
        return;
      }
      for (const [count, kind] of [
        [day.valid, "ks-bar-valid"],
        [day.refused, "ks-bar-refused"],
      ]) {
        const height = count ? Math.max(1, Math.round((count / top) * 20)) : 0;
        y -= height;
        const bar = document.createElementNS(svgNs, "rect");
        bar.setAttribute("x", String(index * 10 + 1));
        bar.setAttribute("y", String(y));
        bar.setAttribute("width", "8");
        bar.setAttribute("height", String(height));
        bar.setAttribute("class", kind);
        svg.append(bar);
      }
    });
    const words = `${valid} ${valid === 1 ? "use" : "uses"}` + (refused ? `, ${refused} refused` : "");
    wrap.append(svg, element("span", words));
    return wrap;
  }

  function statusOf(key) {
    const badge = element("span", key.status, `ks-badge ks-badge-${key.status}`);
    if (key.rotated_to && key.status === "active") {
      const wrap = element("span");
      wrap.append(badge, element("span", "replaced: stops at its expiry", "ks-muted ks-block"));
      return wrap;
    }
    if (key.revocation_reason && key.status !== "active") {
      const wrap = element("span");
      wrap.append(badge, element("span", key.revocation_reason, "ks-muted ks-block"));
      return wrap;
    }
    return badge;
  }

  function actionButton(label, key, open) {
    const button = element("button", label, "ks-button ks-small" + (label === "Revoke" ? " ks-danger-text" : ""));
    button.type = "button";
    button.append(element("span", ` ${key.name}`, "ks-visually-hidden"));
    button.addEventListener("click", () => open(key, button));
    return button;
  }

  function row(key) {
    const tr = element("tr");
    tr.dataset.keyId = key.id;
    const cells = [
      ["Name", () => {
        const wrap = element("span");
        wrap.append(element("span", key.name, "ks-name"));
        if (key.description) wrap.append(element("span", key.description, "ks-muted ks-block"));
        return wrap;
      }],
      ["Key", () => {
        const hint = element("code", `${key.start.slice(0, key.start.indexOf("_") + 9)}…`);
        hint.title = `${key.start}_…`;
        return hint;
      }],
      ["Scopes", () => (key.scopes.length ? element("span", key.scopes.join(", ")) : element("span", "none", "ks-muted"))],
      ["Status", () => statusOf(key)],
      ["Created", () => {
        const wrap = element("span");
        wrap.append(timeCell(key.created_at, ""));
        if (key.created_by) wrap.append(element("span", `by ${key.created_by.replace(/^user:/, "")}`, "ks-muted ks-block"));
        return wrap;
      }],
      ["Expires", () => timeCell(key.expires_at, "Never")],
      ["Last used", () => timeCell(key.last_used_at, "Never used")],
      ["Last 7 days", () => useChart(key.use_7d)],
    ];
    for (const [label, content] of cells) {
      const td = element("td");
      td.dataset.label = label;
      td.append(content());
      tr.append(td);
    }
    if (canWrite) {
      const td = element("td", null, "ks-row-actions");
      td.dataset.label = "Actions";
      const buttons = element("div", null, "ks-row-buttons");
      if (key.status === "active" && !key.rotated_to) buttons.append(actionButton("Rotate", key, openRotate));
      if (key.status !== "revoked" && key.status !== "leaked") buttons.append(actionButton("Revoke", key, openRevoke));
      td.append(buttons);
      tr.append(td);
    }
    return tr;
  }

  function showError(message) {
    $("ks-error-text").textContent = message;
    errorBox.hidden = false;
    statusLine.textContent = "";
  }

  async function load(append = false) {
    const number = ++listing;
    errorBox.hidden = true;
    statusLine.textContent = append ? "Loading more keys…" : "Loading your team's keys…";
    const query = new URLSearchParams({ team: team(), include_revoked: String($("ks-include-revoked").checked) });
    if (append && nextCursor) query.set("cursor", nextCursor);
    let page;
    try {
      page = await call("GET", `${keysUrl}?${query}`);
    } catch (error) {
      if (number === listing) showError(`Your keys could not be loaded. ${error.message}`);
      return;
    }
    if (number !== listing) return;
    if (!append) rows.replaceChildren();
    rows.append(...page.items.map(row));
    nextCursor = page.next_cursor;
    more.hidden = !nextCursor;
    const count = rows.children.length;
    table.hidden = count === 0;
    if (count === 0) {
      statusLine.textContent = canWrite
        ? "Your team has no API keys yet. Create one for each machine or service that calls the API."
        : "Your team has no API keys yet.";
    } else {
      statusLine.textContent = `${count} ${count === 1 ? "key" : "keys"}${nextCursor ? " shown, more to load" : ""}.`;
    }
  }

  $("ks-retry").addEventListener("click", () => load());
  more.addEventListener("click", () => load(true));
  $("ks-include-revoked").addEventListener("change", () => load());
  if ($("ks-team").tagName === "SELECT") $("ks-team").addEventListener("change", () => load());

  if (!canWrite) {
    load();
    return;
  }

  // Dialogs: modal (the rest of the page is inert, so focus stays inside), and focus goes back
  // to the button that opened one when it closes.
  let opener = null;
  function openDialog(dialog, from) {
    opener = from;
    dialog.querySelectorAll(".ks-error-text").forEach((node) => (node.textContent = ""));
    dialog.showModal();
  }
  function closeDialog(dialog) {
    dialog.close();
  }
  // A modal dialog keeps the rest of the page inert, but Tab past its last control would leave
  // the page (to the browser's own controls): it wraps round to the first, and Shift+Tab back.
  function focusable(dialog) {
    return [...dialog.querySelectorAll("button, input, select, textarea, [href]")].filter(
      (control) => !control.disabled && control.type !== "hidden" && control.getClientRects().length > 0,
    );
  }
  function keepFocusIn(dialog, event) {
    if (event.key !== "Tab") return;
    const controls = focusable(dialog);
    const first = controls[0];
    const last = controls[controls.length - 1];
    if (event.shiftKey && (document.activeElement === first || !dialog.contains(document.activeElement))) {
      event.preventDefault();
      last.focus();
    } else if (!event.shiftKey && (document.activeElement === last || !dialog.contains(document.activeElement))) {
      event.preventDefault();
      first.focus();
    }
  }
  for (const dialog of root.querySelectorAll("dialog")) {
    dialog.addEventListener("keydown", (event) => keepFocusIn(dialog, event));
    dialog.addEventListener("close", () => {
      if (opener && opener.isConnected) opener.focus();
      else $("ks-create-open").focus();
    });
    dialog.querySelectorAll("[data-close]").forEach((button) => button.addEventListener("click", () => closeDialog(dialog)));
  }

  async function submit(form, errorId, work) {
    const buttons = form.querySelectorAll("button");
    buttons.forEach((button) => (button.disabled = true));
    try {
      await work();
    } catch (error) {
      $(errorId).textContent = error.message;
    } finally {
      buttons.forEach((button) => (button.disabled = false));
    }
  }

  // Create.
  const createDialog = $("ks-create");
  const createForm = $("ks-create-form");
  const expires = $("ks-expires");
  const expiresAt = $("ks-expires-at");
  $("ks-create-open").addEventListener("click", (event) => {
    createForm.reset();
    $("ks-expires-at-field").hidden = true;
    const tomorrow = new Date(Date.now() + 86400000);
    expiresAt.min = tomorrow.toISOString().slice(0, 10);
    openDialog(createDialog, event.currentTarget);
  });
  expires.addEventListener("change", () => {
    $("ks-expires-at-field").hidden = expires.value !== "custom";
  });
  createForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const name = $("ks-name").value.trim();
    if (!name) {
      $("ks-create-error").textContent = "Please give the key a name.";
      $("ks-name").focus();
      return;
    }
    const body = {
      team: team(),
      name,
      description: $("ks-description").value.trim() || null,
      expires: expires.value,
      scopes: [...createForm.querySelectorAll("input[name=scopes]:checked")].map((box) => box.value),
    };
    if (expires.value === "custom") {
      if (!expiresAt.value) {
        $("ks-create-error").textContent = "Please choose the expiry date.";
        expiresAt.focus();
        return;
      }
      body.expires_at = new Date(`${expiresAt.value}T23:59:59`).toISOString();
    }
    submit(createForm, "ks-create-error", async () => {
      const created = await call("POST", keysUrl, body);
      closeDialog(createDialog);
      showSecret(created);
      load();
    });
  });

  // The new key, once: it leaves the page when the dialog closes, and the dialog closes only
  // once the customer says it is copied (Escape does not close it before that).
  const secretDialog = $("ks-secret");
  const secretValue = $("ks-secret-value");
  const confirmBox = $("ks-secret-confirm");
  function showSecret(created) {
    confirmBox.checked = false;
    $("ks-copy-status").textContent = "";
    secretValue.value = created.key;
    openDialog(secretDialog, opener);
    secretValue.focus();
    secretValue.select();
  }
  $("ks-copy").addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(secretValue.value);
      $("ks-copy-status").textContent = "Copied to the clipboard.";
    } catch {
      secretValue.focus();
      secretValue.select();
      $("ks-copy-status").textContent = "The browser did not let the page copy: the key is selected, copy it yourself.";
    }
  });
  function refuseToClose(event) {
    if (confirmBox.checked) return false;
    event.preventDefault();
    $("ks-secret-error").textContent = "Tick the box once you have copied the key: it is not shown again.";
    confirmBox.focus();
    return true;
  }
  secretDialog.addEventListener("cancel", refuseToClose);
  secretDialog.addEventListener("keydown", (event) => {
    if (event.key === "Escape") refuseToClose(event);
  });
  confirmBox.addEventListener("change", () => {
    if (confirmBox.checked) $("ks-secret-error").textContent = "";
  });
  $("ks-secret-done").addEventListener("click", (event) => {
    if (refuseToClose(event)) return;
    closeDialog(secretDialog);
  });
  secretDialog.addEventListener("close", () => {
    secretValue.value = "";
    $("ks-copy-status").textContent = "";
  });

  // Rotate and revoke: each asks first, in a dialog naming the key.
  let chosen = null;
  function openRotate(key, button) {
    chosen = key;
    $("ks-rotate").querySelector(".ks-key-name").textContent = key.name;
    $("ks-rotate-form").reset();
    openDialog($("ks-rotate"), button);
  }
  function openRevoke(key, button) {
    chosen = key;
    $("ks-revoke").querySelector(".ks-key-name").textContent = key.name;
    // Revoking a key revokes the key that replaced it too: a leaked key must leave no live successor.
    $("ks-revoke-successor").hidden = !key.rotated_to;
    $("ks-revoke-form").reset();
    openDialog($("ks-revoke"), button);
  }
  $("ks-rotate-form").addEventListener("submit", (event) => {
    event.preventDefault();
    submit($("ks-rotate-form"), "ks-rotate-error", async () => {
      const rotated = await call("POST", keyUrl(chosen.id, "rotate"), { grace_seconds: Number($("ks-grace").value) });
      closeDialog($("ks-rotate"));
      opener = $("ks-create-open");
      showSecret(rotated);
      load();
    });
  });
  $("ks-revoke-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const reason = $("ks-reason").value.trim();
    submit($("ks-revoke-form"), "ks-revoke-error", async () => {
      await call("POST", keyUrl(chosen.id, "revoke"), reason ? { reason } : {});
      closeDialog($("ks-revoke"));
      opener = $("ks-create-open");
      $("ks-create-open").focus();
      await load();
      statusLine.textContent = `Revoked "${chosen.name}". ${statusLine.textContent}`;
    });
  });

  load();
})();
