"""sweep/tracking.py against a real sqlite MLflow store: the database is created whole or not at
all, and a store that fails is one line naming the file and the cause."""
import pytest
from mlflow.tracking import MlflowClient

from sweep import tracking


def test_the_database_is_created_whole_or_not_at_all(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'run' / 'mlflow.db'}"
    real = MlflowClient.search_experiments

    def stopped(self, *a, **kw):
        raise KeyboardInterrupt  # Ctrl-C while MLflow builds its tables

    monkeypatch.setattr(MlflowClient, "search_experiments", stopped)
    with pytest.raises(KeyboardInterrupt):
        tracking.open_store(uri)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == []
    monkeypatch.setattr(MlflowClient, "search_experiments", real)
    client = tracking.open_store(uri)
    assert client.create_experiment("x") and (tmp_path / "run" / "mlflow.db").is_file()
    assert tracking.open_store(uri).get_experiment_by_name("x") is not None  # opened again as it is


def test_a_store_that_fails_is_named_with_its_cause(tmp_path):
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    client = tracking.open_store(uri)
    run = client.create_run(client.create_experiment("x"))
    db.write_bytes(b"garbage" * 1000)  # damaged under a running sweep
    with pytest.raises(Exception) as raised:
        client.log_metric(run.info.run_id, "m", 1.0)
    explained = tracking.explain(raised.value, uri)
    assert isinstance(explained, tracking.TrackingError)
    assert str(explained) == (f"MLflow store {db}: file is not a database (DatabaseError); move it away to start "
                              "a new MLflow store here (or set MLFLOW_TRACKING_URI)")
    with pytest.raises(tracking.TrackingError, match=rf"MLflow store {db}: file is not a database"):
        tracking.open_store(uri)
    assert tracking.explain(ValueError("not MLflow's"), uri) is None
    with pytest.raises(Exception) as invalid:  # a request MLflow rejects: this program's bug
        tracking.open_store(f"sqlite:///{tmp_path / 'other.db'}").log_metric(run.info.run_id, "a=b", 1.0)
    assert tracking.explain(invalid.value, uri) is None


def test_credentials_in_the_uri_are_sent_as_basic_auth_and_never_shown():
    """MLFLOW_TRACKING_URI=http://alice:S3cretT0ken@host:port: the health check sends them as
    MLflow does (HTTP basic auth) and passes; a failing check names the server with the password
    masked."""
    import base64
    import http.server
    import threading
    from sweep_checks import free_port
    seen = []

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append((self.path, self.headers.get("Authorization")))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        tracking.check_reachable(f"http://alice:S3cretT0ken@127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()
    assert seen == [("/health", "Basic " + base64.b64encode(b"alice:S3cretT0ken").decode())]
    port = free_port()
    with pytest.raises(tracking.TrackingError) as e:
        tracking.check_reachable(f"http://alice:S3cretT0ken@127.0.0.1:{port}", timeout_s=2)
    assert "S3cretT0ken" not in str(e.value) and f"http://alice:***@127.0.0.1:{port} is unreachable" in str(e.value)
    assert tracking.shown("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
