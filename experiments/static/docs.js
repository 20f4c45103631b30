// Initialise the vendored Swagger UI against our own OpenAPI document (no inline script, CSP-safe).
window.addEventListener("DOMContentLoaded", function () {
  window.SwaggerUIBundle({ url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true });
});
