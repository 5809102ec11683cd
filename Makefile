# The two commands a newcomer needs:   make run   and   make test
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test setup node-deps lint migrations clean playground lock

# The exact versions in requirements-dev.lock (hash-checked), then the project itself on top.
$(STAMP): pyproject.toml requirements-dev.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements-dev.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)

# Local development mode: SQLite file, no Azure, loopback only; everyone on this machine is admin.
# Readable log lines (FUSION_LOG_FORMAT=json for the production form).
run: $(STAMP)
	FUSION_DEV_ADMINS="$${FUSION_DEV_ADMINS:-*}" FUSION_LOG_FORMAT="$${FUSION_LOG_FORMAT:-text}" \
	  $(BIN)/python app.py

# Node packages for the card renderer, the Teams manifest schema and the Agents Playground
# (offline after install).
node-deps:
	@if command -v npm >/dev/null 2>&1; then \
	  for d in tests/cardcheck/render manifest/schema tests/e2e; do \
	    if [ -f $$d/package-lock.json ] && [ ! -d $$d/node_modules ]; then \
	      (cd $$d && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error) || exit 1; \
	    fi; \
	  done; \
	else echo "npm not found: card rendering and manifest schema tests will be skipped"; fi

# Try the bot in the Microsoft 365 Agents Playground (a Teams-like web page, offline): the bot in
# local development mode with the demo catalog, both in a loopback-only network namespace.
playground: $(STAMP) node-deps
	tests/e2e/playground.sh open

test: $(STAMP) node-deps
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check bot app.py tests
	$(BIN)/mypy bot app.py

# Create a migration after changing bot/domain/models.py.
migrations: $(STAMP)
	rm -f /tmp/fusion-makemigrations.sqlite3
	DATABASE_URL=sqlite:///tmp/fusion-makemigrations.sqlite3 $(BIN)/tortoise \
	  -c bot.domain.migrations_config.TORTOISE_ORM makemigrations

# Refresh the lock files after changing the dependencies in pyproject.toml (or to take new
# releases): requirements.lock is what a deployment installs, requirements-dev.lock adds the
# test tools at the same versions. Both resolve for every supported Python and platform.
UV_COMPILE = $(BIN)/uv pip compile pyproject.toml --universal --python-version 3.11 \
	--generate-hashes --quiet --custom-compile-command 'make lock'
lock: $(STAMP)
	$(BIN)/python -m pip install --quiet 'uv>=0.5'
	$(UV_COMPILE) $(UPGRADE) -o requirements.lock
	$(UV_COMPILE) $(UPGRADE) --extra test -c requirements.lock -o requirements-dev.lock

clean:
	rm -rf $(VENV) build test-artifacts .pytest_cache
