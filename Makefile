# Two commands set everything up on a fresh machine: `make run` and `make test`.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
FLASK := $(VENV)/bin/flask --app wsgi
# worksteal: a worker that runs out of tests takes over the other's slow tail.
PYTEST_ARGS ?= -n auto --dist worksteal
export PARCOURS_INSTANCE_PATH ?= $(CURDIR)/instance
export NO_MKDOCS_2_WARNING ?= 1

.PHONY: venv run test lint bench docs chromium redis clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

# Browser tests drive Debian's Chromium; never a downloaded browser.
chromium:
	@test -x /usr/bin/chromium || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

run: venv
	$(FLASK) db upgrade
	$(FLASK) seed-demo
	$(FLASK) bootstrap-dev
	PARCOURS_SCHEDULER=$${PARCOURS_SCHEDULER:-on} PARCOURS_DEMO=$${PARCOURS_DEMO:-1} \
		$(FLASK) run --host 127.0.0.1 --port 5000 --no-reload

# The rate-limit tests use the Redis server at 127.0.0.1:6379: start one if none answers.
redis:
	@redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 || \
		(command -v redis-server >/dev/null && redis-server --bind 127.0.0.1 --port 6379 --daemonize yes \
		&& for i in 1 2 3 4 5 6 7 8 9 10; do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 0.5; done) || true

# Bytecode is written (even where PYTHONDONTWRITEBYTECODE is set): every xdist worker and
# every server or CLI process a test starts would otherwise compile the project again.
test: venv chromium redis
	PYTHONDONTWRITEBYTECODE= $(VENV)/bin/pytest $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy stats

bench: venv
	$(PY) -m bench

# The documentation site (docs/, mkdocs.yml) into site/; broken links and missing pages fail.
docs: venv
	$(VENV)/bin/mkdocs build --strict --quiet

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache site
