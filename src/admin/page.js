setInterval(async () => {
  try {
    // Not while someone is filling in a form (a search, an account name, "yes, remove"):
    // redrawing would wipe it.
    const busy = [...document.querySelectorAll("#credentials input")].some((i) => i === document.activeElement
      || (i.type === "checkbox" ? i.checked !== i.defaultChecked : i.value !== i.defaultValue));
    if (busy) return;
    // The same view (search, page) as the one shown: the address keeps the query.
    const res = await fetch(location.pathname + location.search, { headers: { "Accept": "text/html" }, cache: "no-store" });
    if (!res.ok) return;
    const doc = new DOMParser().parseFromString(await res.text(), "text/html");
    for (const id of ["credentials", "routes", "updated"]) {
      const fresh = doc.getElementById(id), here = document.getElementById(id);
      if (fresh && here) here.replaceWith(fresh);
    }
  } catch (e) { /* the proxy is restarting: try again next time */ }
}, REFRESH_MS);
// Remove asks once more (the form's "yes, remove" box is the question without JavaScript).
document.addEventListener("submit", (e) => {
  const form = e.target;
  if (form.classList.contains("remove") && !confirm("Remove the account " + form.dataset.account + "? Its tokens are deleted; the person must sign in again.")) {
    e.preventDefault();
  }
});
