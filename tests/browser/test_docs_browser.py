"""The offline API docs render in a real browser from vendored assets only."""


def test_api_docs_render_from_the_local_openapi_document(page, live_server):
    external = []
    page.on("request", lambda request: None if request.url.startswith(live_server.url)
            else external.append(request.url))
    page.goto(live_server.url + "/docs")
    page.wait_for_selector(".swagger-ui .info", timeout=15000)
    assert "Parcours API" in page.inner_text(".swagger-ui .info")
    assert page.locator(".opblock-summary-path", has_text="/api/v1/experiments").count() >= 1
    assert external == []
