"""Property-based fuzzing of the API from its own OpenAPI schema (schemathesis): no request it
generates, valid or deliberately invalid, may produce a 5xx or an answer that breaks the schema.
Bounded in examples per operation and in time.

Schemathesis' pytest plugin does not run on pytest 9, so the operations are driven with
Hypothesis directly from schemathesis' strategies.
"""
from __future__ import annotations

import time

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,
                                               status_code_conformance)

from fedocr.serve.app import ServeConfig, create_app
from fedocr.export import export_onnx
from serve_fixtures import fixed_lines_small, random_model

EXAMPLES = 20          # per operation and generation mode
TIME_BUDGET_S = 240    # the whole run stops adding operations after this


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    model = export_onnx(random_model(folder / "m.pt"), folder / "m.onnx", lines=fixed_lines_small(4)).path
    application = create_app(ServeConfig(model=model))
    with TestClient(application):           # runs the lifespan: the model slot stays on app.state
        yield application


@pytest.mark.slow
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_api_never_answers_5xx_or_breaks_its_schema(app, mode):
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    start = time.monotonic()
    tested = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if time.monotonic() - start > TIME_BUDGET_S / 2:
            break

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def fuzz(case) -> None:
            case.call_and_validate(checks=checks)

        try:
            fuzz()
        except Unsatisfiable:
            assert mode == GenerationMode.NEGATIVE   # nothing to get wrong in a call without parameters
            continue
        tested.append(operation.label)
    assert any("/api/ocr" in label for label in tested)
