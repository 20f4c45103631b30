"""README truths: its curl examples, run against a live server seeded with the demo, answer
what the README says they answer (``tests/readme_examples.py`` parses and compares)."""

from __future__ import annotations

from flask import Flask

from experiments.db import get_db
from experiments.services.demo import seed_demo_data
from tests.conftest import LiveServer, new_api_key
from tests.readme_examples import check, examples, run


def test_every_checked_readme_example_answers_what_the_readme_says(app: Flask,
                                                                  live_server: LiveServer):
    with get_db(app).session() as session:
        list(seed_demo_data(session, traffic=False))
    env = {"KEY": new_api_key(app, "admin"), "PK": new_api_key(app, "client"),
           "CLIENT": new_api_key(app, "client")}
    found = examples()
    assert len(found) >= 14, "a README example block lost its marker"
    assert sum(example.documented is not None for example in found) >= 4
    problems = []
    for example in found:
        status, body = run(example, live_server.url.removeprefix("http://"), env)
        if (problem := check(example, status, body)) is not None:
            problems.append(f"README line {example.line}: {problem}\n  {example.command}")
    assert not problems, "\n".join(problems)


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
