# The entry points users look for. `setup`, `run` and `test` are the README's two commands, split where the
# README joins them with `&&` (tests/unit/test_makefile.py keeps them equal); the others wrap the compose
# stack and the Minikube overlay of docs/DEPLOY.md.
#
#   make setup                       # the locked environment in .venv (uv.lock)
#   make run                         # the main job: raw data -> ... -> champion served on 127.0.0.1:8000
#   make run ARGS="--trials-per-family 3 --time-budget-s 60 --exit-after-sample"
#   make test                        # lint, types, all tests
#   make up / make down              # the Docker Compose stack (.env from .env.example first)
#   make stack-test                  # the stack up from locally built images, the whole loop through it, down
#   make mutation                    # mutation testing of the core modules (tools/mutation.py, docs/MUTATION.md)
#   make minikube                    # the API in Minikube, against the compose stack's MLflow

SHELL := /bin/bash
PYTHON ?= python3
UV_VERSION := 0.13.9
RAW_DATA ?= ../shared/data/dataset_diabetes.zip
ARGS ?=
# Compose v2 (`docker compose`) where the plugin answers, else v1 (`docker-compose`); COMPOSE=... overrides.
COMPOSE ?= $(shell if docker compose version >/dev/null 2>&1; then echo docker compose; \
	elif command -v docker-compose >/dev/null 2>&1; then echo docker-compose; fi)
# The first line of every target that runs compose.
REQUIRE_COMPOSE = test -n "$(COMPOSE)" || { echo "error: neither 'docker compose' nor 'docker-compose' is installed" >&2; exit 1; }
IMAGE ?= healthpredict-service:0-initial
OVERLAY := k8s/overlays/minikube

.DEFAULT_GOAL := help
.PHONY: help setup run test lint up down stack-test mutation minikube

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z-]+):.*## (.*)/  make \1\t\2/' | expand -t 18

setup: ## create .venv and install the locked dependencies
	$(PYTHON) -m venv .venv && .venv/bin/pip install 'uv==$(UV_VERSION)' && .venv/bin/uv sync --locked --inexact

run: setup ## the main job end to end (RAW_DATA=zip|csv|URI, ARGS=pipeline options)
	HEALTHPREDICT_RAW_DATA=$(RAW_DATA) .venv/bin/healthpredict pipeline $(ARGS)

test: ## lint, type checks and every test (the README's test command)
	.venv/bin/uv sync --locked --inexact --all-extras && .venv/bin/ruff check . && .venv/bin/mypy && .venv/bin/python -m pytest

lint: ## ruff (lint and format check) and mypy
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy

up: ## start the compose stack (needs .env; its `preflight` refuses the placeholders of .env.example)
	@test -f .env || { echo "error: no .env: cp .env.example .env, then replace every placeholder" >&2; exit 1; }
	@$(REQUIRE_COMPOSE)
	$(COMPOSE) up -d --build

down: ## stop the compose stack (volumes are kept; `down -v` deletes them)
	@$(REQUIRE_COMPOSE)
	$(COMPOSE) down

stack-test: setup ## the stack up from locally built images, the whole loop through it, then down (RAW_DATA=zip|csv)
	@$(REQUIRE_COMPOSE)
	COMPOSE="$(COMPOSE)" HEALTHPREDICT_RAW_DATA=$(RAW_DATA) .venv/bin/python docker/stack_test.py $(ARGS)

mutation: setup ## mutmut over the core modules, each against its own tests (MODULE=path for one, REPORT=file.json)
	.venv/bin/uv sync --locked --inexact --all-extras && .venv/bin/python tools/mutation.py $(if $(MODULE),--module $(MODULE)) $(if $(REPORT),--report $(REPORT)) $(ARGS)

minikube: ## build the service image in Minikube and apply the overlay
	@for f in reload.env mlflow.env; do test -f $(OVERLAY)/$$f || { echo "error: no $(OVERLAY)/$$f: copy $$f.example and fill it in (docs/DEPLOY.md)" >&2; exit 1; }; done
	eval "$$(minikube docker-env)" && docker build -t $(IMAGE) .
	kubectl apply -k $(OVERLAY)
	kubectl -n healthpredict rollout status deployment/healthpredict-service --timeout=300s
