"""Fixtures of the service tests: one tiny trained run (session), a Predictor on it, apps on fresh databases."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the service tests need the serve extra: pip install 'cxrmtl[serve]'")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx")

from fastapi.testclient import TestClient
from servekit import ServeRun, make_serve_run

from cxrmtl.infer.engine import Predictor
from cxrmtl.serve.app import create_app
from cxrmtl.serve.service import ServeSettings, Service
from cxrmtl.serve.store import Store


@pytest.fixture(scope="session")
def serve_run(tmp_path_factory: pytest.TempPathFactory) -> ServeRun:
    return make_serve_run(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="session")
def predictor(serve_run: ServeRun) -> Predictor:
    return Predictor.from_run(serve_run.run, backend="torch")


ClientFactory = Callable[..., TestClient]


@pytest.fixture
def make_client(predictor: Predictor, tmp_path: Path) -> Iterator[ClientFactory]:
    """``make_client(**settings)`` -> a started TestClient on a fresh database in tmp_path (closed afterwards)."""
    opened: list[TestClient] = []

    def make(db: Path | None = None, **settings: object) -> TestClient:
        service = Service(predictor, Store(db or tmp_path / f"db{len(opened)}" / "worklist.sqlite"),
                          settings=ServeSettings(**settings))
        client = TestClient(create_app(service), raise_server_exceptions=False)
        client.__enter__()
        opened.append(client)
        return client

    yield make
    for client in opened:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: ClientFactory) -> TestClient:
    return make_client()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep the service tests on one xdist worker (`--dist loadgroup`): the tiny run is trained once, not twice."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.xdist_group("serve"))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "xdist_group(name): run on one xdist worker with --dist loadgroup")
