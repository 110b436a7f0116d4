// Starts Swagger UI on /docs. A file rather than an inline script, so the page works under a
// Content-Security-Policy without 'unsafe-inline' (tracker/security.py). The settings come from
// the container's data attributes, filled in by templates/swagger_ui.html.
window.addEventListener("load", function () {
  var container = document.getElementById("swagger-ui-container");
  var config = { url: container.dataset.specUrl, dom_id: "#swagger-ui-container" };
  window.ui = SwaggerUIBundle(Object.assign(config, JSON.parse(container.dataset.config)));
});
