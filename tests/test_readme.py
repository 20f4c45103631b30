"""Documentation truths: the curl examples of the README and of every page under ``docs/``,
run against a live server seeded with the demo, answer what the documentation says they
answer (``tests/readme_examples.py`` parses and compares)."""

from __future__ import annotations

from flask import Flask

from experiments.db import get_db
from experiments.services.demo import seed_demo_data
from tests.conftest import LiveServer, new_api_key
from tests.readme_examples import MARKER, check, examples, run


def test_every_checked_documentation_example_answers_what_it_says(app: Flask,
                                                                  live_server: LiveServer):
    with get_db(app).session() as session:
        list(seed_demo_data(session, traffic=False))
    env = {"KEY": new_api_key(app, "admin"), "PK": new_api_key(app, "client"),
           "CLIENT": new_api_key(app, "client")}
    found = examples()
    assert len(found) >= 20, "an example block lost its marker"
    assert sum(example.documented is not None for example in found) >= 8
    problems = []
    for example in found:
        status, body = run(example, live_server.url.removeprefix("http://"), env)
        if (problem := check(example, status, body)) is not None:
            problems.append(f"{example.where}: {problem}\n  {example.command}")
    assert not problems, "\n".join(problems)


def test_the_readme_tour_and_the_moved_examples_are_all_checked():
    by_source: dict[str, int] = {}
    for example in examples():
        by_source[example.source] = by_source.get(example.source, 0) + 1
    # The tour (create, start, assign, events, analyze, report) and every block moved
    # out of the README keep their marker.
    assert by_source["README.md"] >= 6
    for page, least in {"docs/product/experiments.md": 8, "docs/developers/assignment.md": 4,
                        "docs/developers/openfeature.md": 2, "docs/developers/events.md": 3,
                        "docs/developers/browser-sdk.md": 1, "docs/product/power.md": 2}.items():
        assert by_source.get(page, 0) >= least, page


def test_every_documentation_page_is_searched_for_examples(tmp_path, monkeypatch):
    import tests.readme_examples as module

    page = tmp_path / "docs" / "someone" / "new-feature.md"
    page.parent.mkdir(parents=True)
    page.write_text(f"# New\n\n{MARKER}\n```sh\ncurl -s localhost:5000/healthz\n"
                    '# {"status": "ok"}\n```\n', encoding="utf-8")
    (tmp_path / "README.md").write_text("# Parcours\n", encoding="utf-8")
    monkeypatch.setattr(module, "ROOT", tmp_path)
    monkeypatch.setattr(module, "README", tmp_path / "README.md")
    monkeypatch.setattr(module, "DOCS", tmp_path / "docs")
    (example,) = module.examples()
    assert (example.source, example.line, example.documented) == \
        ("docs/someone/new-feature.md", 5, '{"status": "ok"}')


def test_the_documented_assignment_is_the_demo_split():
    documented = {example.command.split('"unit_id": "')[1].split('"')[0]: example.documented
                  for example in examples()
                  if "/api/v1/assign" in example.command and example.documented}
    assert '"variant": "control"' in documented["visitor-42"]
    assert '"variant": "one-page"' in documented["visitor-1"]


def test_the_comparison_catches_a_documented_output_that_is_not_real():
    from tests.readme_examples import Example, check

    example = Example(1, "curl …", '{"assignments": [{"variant": "one-page", "payload": "…"}]}')
    real = '{"unit_id": "v", "assignments": [{"variant": "control", "payload": {}}]}'
    assert check(example, None, real) == ".assignments[0].variant: documented 'one-page', " \
                                         "got 'control'"
    assert check(Example(1, "curl …", "200 {...}"), 404, "{}") == "status 404, documented 200"
    assert check(Example(1, "curl …", None), None, '{"error": {"code": "x"}}') is not None
