"""The `mailgate` command as a user runs it: a real process, real data dir, real server."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import free_port

EXE = str(Path(sys.executable).parent / "mailgate")


def run(
    data_dir: Path,
    *args: str,
    env: dict[str, str] | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MAILGATE_")}
    full_env.update(env or {})
    r = subprocess.run(
        [EXE, "--data-dir", str(data_dir), *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=120,
        cwd=data_dir.parent,
    )
    if check and r.returncode != 0:
        raise AssertionError(f"mailgate {' '.join(args)} exited {r.returncode}: {r.stderr}")
    return r


def last_line(r: subprocess.CompletedProcess[str]) -> str:
    return r.stdout.strip().splitlines()[-1]


def http_get(url: str, key: str | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


def test_tenants_and_keys_print_their_ids_last(data_dir: Path) -> None:
    tid = last_line(run(data_dir, "tenants", "create", "alpha"))
    assert tid.startswith("ten_")
    key = last_line(run(data_dir, "apikeys", "create", "--tenant", "alpha", "--scopes", "read,manage"))
    assert key.startswith("mg_key_")
    key2 = last_line(run(data_dir, "apikeys", "create", "--tenant", tid, "--scopes", "send"))
    assert key2 != key
    listing = run(data_dir, "apikeys", "list", "--tenant", "alpha").stdout
    assert listing.count("key_") == 2 and key not in listing
    assert "alpha" in run(data_dir, "tenants", "list").stdout
    kid = key.split("_")[1] + "_" + key.split("_")[2]
    assert "revoked" in run(data_dir, "apikeys", "revoke", kid).stdout
    assert "revoked" in run(data_dir, "apikeys", "list").stdout


def test_clear_errors_for_bad_input(data_dir: Path) -> None:
    r = run(data_dir, "apikeys", "create", "--tenant", "ghost", "--scopes", "read", check=False)
    assert r.returncode == 1 and "tenant 'ghost' not found" in r.stderr and "Traceback" not in r.stderr
    r = run(data_dir, "apikeys", "create", "--tenant", "ghost", "--scopes", "root", check=False)
    assert r.returncode == 2 and "unknown scope 'root'" in r.stderr
    run(data_dir, "tenants", "create", "dup")
    r = run(data_dir, "tenants", "create", "dup", check=False)
    assert r.returncode == 1 and "already exists" in r.stderr
    r = run(data_dir, "config", "show", env={"MAILGATE_DATABASE_POOL_SIZE": "lots"}, check=False)
    assert r.returncode == 2 and "MAILGATE_DATABASE_POOL_SIZE" in r.stderr and "Traceback" not in r.stderr


def test_audit_verify_passes_then_names_the_tampered_entry(data_dir: Path) -> None:
    for name in ("a", "b", "c"):
        run(data_dir, "tenants", "create", name)
    ok = run(data_dir, "audit", "verify")
    assert "3 entries verified" in ok.stdout
    with sqlite3.connect(data_dir / "mailgate.db") as con:
        con.execute("UPDATE audit_log SET action = action || 'x' WHERE seq = 2")
    bad = run(data_dir, "audit", "verify", check=False)
    assert bad.returncode == 1
    assert "entry 2" in bad.stdout


def test_db_check_and_upgrade(data_dir: Path) -> None:
    r = run(data_dir, "db", "check", check=False)
    assert r.returncode == 1 and "db upgrade" in r.stdout
    assert "database schema at 0" in run(data_dir, "db", "upgrade").stdout
    assert "current" in run(data_dir, "db", "check").stdout
    assert "already current" in run(data_dir, "db", "upgrade").stdout


def test_config_show_masks_secrets_and_honours_the_file(data_dir: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "mailgate.toml"
    cfg.write_text('[http]\nlisten = "127.0.0.1:9999"\n')
    r = run(
        data_dir,
        "--config",
        str(cfg),
        "config",
        "show",
        env={"MAILGATE_MASTER_KEY": "AAAAsecretAAAA", "MAILGATE_DATABASE_URL": "postgresql://u:hunter2@h/db"},
    )
    shown = json.loads(r.stdout)
    assert shown["http"]["listen"] == "127.0.0.1:9999"
    assert "hunter2" not in r.stdout and "AAAAsecretAAAA" not in r.stdout


def test_keys_rotate_is_audited_and_keeps_keys_working(data_dir: Path) -> None:
    run(data_dir, "tenants", "create", "alpha")
    before = (data_dir / "master.key").read_text()
    r = run(data_dir, "keys", "rotate")
    assert "re-wrapped" in r.stdout
    assert (data_dir / "master.key").read_text() != before
    assert "alpha" in run(data_dir, "tenants", "list").stdout
    assert "2 entries verified" in run(data_dir, "audit", "verify").stdout


def _start(data_dir: Path, port: int, *extra: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILGATE_")}
    env["PYTHONUNBUFFERED"] = "1"
    return subprocess.Popen(
        [EXE, "--data-dir", str(data_dir), "serve", "--http", f"127.0.0.1:{port}"]
        + ([] if "--submission" in extra else ["--submission", f"127.0.0.1:{free_port()}"])
        + ([] if "--mx" in extra else ["--mx", f"127.0.0.1:{free_port()}"])
        + list(extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def _wait_ready(proc: subprocess.Popen[str], port: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        try:
            if http_get(f"http://127.0.0.1:{port}/readyz")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError("not ready in time")


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    return out


def test_serve_prints_the_admin_key_once_and_stops_on_sigterm(data_dir: Path) -> None:
    port = free_port()
    proc = _start(data_dir, port)
    try:
        _wait_ready(proc, port)
        status, _ = http_get(f"http://127.0.0.1:{port}/v1/tenants")
        assert status == 401
    finally:
        out = _stop(proc)
    assert proc.returncode == 0, out
    keys = [line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("admin API key:")]
    assert len(keys) == 1
    assert "fingerprint" in out and "SHA256:" in out
    assert (data_dir / "tls" / "cert.pem").exists()

    proc = _start(data_dir, port)
    try:
        _wait_ready(proc, port)
        status, body = http_get(f"http://127.0.0.1:{port}/v1/tenants", keys[0])
        assert status == 200 and b'"items"' in body
    finally:
        out = _stop(proc)
    assert "admin API key:" not in out
    assert proc.returncode == 0


def test_serve_rejects_unknown_roles_and_busy_ports(data_dir: Path) -> None:
    r = run(data_dir, "serve", "--roles", "api,bogus", check=False)
    assert r.returncode == 2 and "unknown role(s) bogus" in r.stderr
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = run(data_dir, "serve", "--http", f"127.0.0.1:{port}", check=False)
    assert r.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.postgres
def test_cli_on_postgresql(data_dir: Path, pg_database: str) -> None:
    env = {"MAILGATE_DATABASE_URL": pg_database}
    tid = last_line(run(data_dir, "tenants", "create", "pg-tenant", env=env))
    assert tid.startswith("ten_")
    assert "pg-tenant" in run(data_dir, "tenants", "list", env=env).stdout
    assert "1 entries verified" in run(data_dir, "audit", "verify", env=env).stdout
    assert not (data_dir / "mailgate.db").exists()


def test_dkim_generate_prints_the_txt_value_last(data_dir: Path) -> None:
    rsa = last_line(run(data_dir, "dkim", "generate", "--domain", "acme.test", "--selector", "s1"))
    assert rsa.startswith("v=DKIM1; k=rsa; p=MII")
    ed = last_line(
        run(data_dir, "dkim", "generate", "--domain", "acme.test", "--selector", "e1", "--algorithm", "ed25519")
    )
    assert ed.startswith("v=DKIM1; k=ed25519; p=")
    again = run(data_dir, "dkim", "generate", "--domain", "acme.test", "--selector", "s1", check=False)
    assert again.returncode != 0 and "already exists" in again.stderr


def test_smtp_credentials_print_username_and_password_last(data_dir: Path) -> None:
    run(data_dir, "tenants", "create", "acme")
    user, password = last_line(run(data_dir, "smtp-credentials", "create", "--tenant", "acme")).split()
    assert user.startswith("smtp_") and len(password) >= 32
    listing = run(data_dir, "smtp-credentials", "list").stdout
    assert user in listing and password not in listing and "active" in listing
    cid = next(line.split()[1] for line in listing.splitlines() if "smc_" in line)
    assert "revoked" in run(data_dir, "smtp-credentials", "revoke", cid).stdout
    unknown = run(data_dir, "smtp-credentials", "create", "--tenant", "nope", check=False)
    assert unknown.returncode != 0 and "tenant 'nope' not found" in unknown.stderr


def test_queue_commands_hold_release_and_cancel(data_dir: Path) -> None:
    port = free_port()
    proc = _start(data_dir, port, "--roles", "api")  # no worker: deliveries stay queued
    try:
        _wait_ready(proc, port)
        run(data_dir, "tenants", "create", "acme")
        key = last_line(run(data_dir, "apikeys", "create", "--tenant", "acme", "--scopes", "send,read"))
        body = json.dumps({"from": "a@acme.test", "to": ["b@example.net"], "subject": "s", "text": "t"}).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/messages",
            data=body,
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            message_id = json.loads(resp.read())["id"]
    finally:
        _stop(proc)
    listing = run(data_dir, "queue", "list").stdout
    assert "queued=1" in listing and "b@example.net" in listing
    assert "b@example.net: held" in run(data_dir, "queue", "hold", message_id).stdout
    assert "held=1" in run(data_dir, "queue", "list", "--status", "held").stdout
    assert "b@example.net: queued" in run(data_dir, "queue", "release", message_id).stdout
    assert "b@example.net: cancelled" in run(data_dir, "queue", "cancel", message_id).stdout
    assert "0 deferred deliveries are due now" in run(data_dir, "queue", "retry").stdout
    bad = run(data_dir, "queue", "list", "--status", "lost", check=False)
    assert bad.returncode == 2 and "known statuses" in bad.stderr
    missing = run(data_dir, "queue", "hold", "msg_nope", check=False)
    assert missing.returncode != 0 and "not found" in missing.stderr


def test_connectors_and_routes_from_the_cli_and_the_config_file(data_dir: Path, tmp_path: Path) -> None:
    created = run(
        data_dir,
        "connectors",
        "put",
        "relay1",
        "--type",
        "smtp_relay",
        "--set",
        "host=127.0.0.1",
        "--set",
        "port=2525",
        "--set",
        "tls=none",
        "--set",
        "username=app",
        "--set",
        "password=hunter2",
    )
    assert last_line(created).startswith("con_")
    bad = run(
        data_dir,
        "connectors",
        "put",
        "x",
        "--type",
        "smtp_relay",
        "--set",
        "host=h",
        "--set",
        "port=99999",
        check=False,
    )
    assert bad.returncode == 2 and "port" in bad.stderr
    assert "relay1 -> direct" not in run(data_dir, "routes", "list").stdout
    missing = run(data_dir, "routes", "put", "default", "--connectors", "relay1,nope", check=False)
    assert missing.returncode != 0 and "nope" in missing.stderr
    listing = run(data_dir, "connectors", "list").stdout
    assert "relay1" in listing and "hunter2" not in listing and "********" in listing

    config = tmp_path / "mailgate.toml"
    config.write_text(
        '[[connectors]]\nname = "direct"\ntype = "mx"\nport = 2526\n\n'
        '[[connectors]]\nname = "relay1"\ntype = "smtp_relay"\nhost = "127.0.0.1"\nport = 2527\ntls = "none"\n\n'
        '[routes]\ndefault = ["relay1", "direct"]\n'
    )
    port = free_port()
    env_file = {"MAILGATE_CONFIG": str(config)}
    full = {k: v for k, v in os.environ.items() if not k.startswith("MAILGATE_")} | env_file | {"PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [EXE, "--data-dir", str(data_dir), "serve", "--roles", "api", "--http", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=full,
    )
    try:
        _wait_ready(proc, port)
    finally:
        _stop(proc)
    assert "relay1 -> direct" in run(data_dir, "routes", "list").stdout
    listing = run(data_dir, "connectors", "list").stdout
    assert '"port": 2527' in listing and '"port": 2526' in listing

    config.write_text('[[connectors]]\nname = "broken"\ntype = "smtp_relay"\nport = 25\n')
    r = subprocess.run(
        [EXE, "--data-dir", str(data_dir), "serve", "--roles", "api", "--http", f"127.0.0.1:{port}"],
        capture_output=True,
        text=True,
        env=full,
        timeout=60,
    )
    assert r.returncode != 0 and "connectors[0] (broken)" in (r.stderr + r.stdout) and "host" in (r.stderr + r.stdout)
