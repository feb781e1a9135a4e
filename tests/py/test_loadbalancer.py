"""Two ferry replicas behind a real nginx (Debian package, loopback only) running
deploy/nginx/ferry.conf. Under continuous load: replica A gets SIGTERM (drains, exits 0) and no
client request may fail; later replica B is SIGKILLed and restarted: only requests in flight
on B at that moment may fail, and each failure is counted."""
import os
import shutil
import signal
import subprocess
import threading
import time

import pytest
import requests

from conftest import free_port, json_infer_body

HERE = os.path.dirname(os.path.abspath(__file__))
DEPLOY_CONF = os.path.join(HERE, "..", "..", "deploy", "nginx", "ferry.conf")
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
CLIENTS = 4


def nginx_config(workdir, listen, upstreams):
    with open(DEPLOY_CONF) as f:
        site = f.read()
    lines = [l for l in site.splitlines() if "# ferry-upstream" not in l]
    servers = [f"    server {u} max_fails=1 fail_timeout=2s;" for u in upstreams]
    out = []
    for line in lines:
        if "# ferry-listen" in line:
            line = f"    listen 127.0.0.1:{listen};"
        out.append(line)
        if line.strip().startswith("zone ferry"):
            out.extend(servers)
    user = "user root root;\n" if os.geteuid() == 0 else ""
    temp = "".join(f"    {k}_temp_path {workdir}/{k};\n"
                   for k in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"])
    return (f"{user}daemon off;\nworker_processes 1;\npid {workdir}/nginx.pid;\n"
            f"error_log {workdir}/error.log warn;\nevents {{ worker_connections 1024; }}\n"
            f"http {{\n    access_log {workdir}/access.log;\n{temp}"
            + "\n".join(out) + "\n}\n")


@pytest.fixture
def nginx(tmp_path):
    if not os.access(NGINX, os.X_OK):
        pytest.fail("nginx not installed (scripts/setup-test-deps.sh installs Debian's nginx-light)")

    class Nginx:
        port = free_port()
        proc = None

        def start(self, upstreams):
            conf = tmp_path / "nginx.conf"
            conf.write_text(nginx_config(str(tmp_path), self.port, upstreams))
            r = subprocess.run([NGINX, "-t", "-p", str(tmp_path), "-c", str(conf)],
                               capture_output=True, text=True)
            assert r.returncode == 0, f"nginx -t failed:\n{r.stderr}\n{conf.read_text()}"
            self.proc = subprocess.Popen([NGINX, "-p", str(tmp_path), "-c", str(conf)],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for _ in range(100):
                try:
                    if requests.get(f"http://127.0.0.1:{self.port}/nginx-health", timeout=1).ok:
                        return
                except requests.RequestException:
                    time.sleep(0.05)
            pytest.fail("nginx did not start: " + (tmp_path / "error.log").read_text())

    n = Nginx()
    yield n
    if n.proc and n.proc.poll() is None:
        n.proc.send_signal(signal.SIGQUIT)
        try:
            n.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            n.proc.kill()


class Load:
    """CLIENTS threads sending inference through nginx as fast as answers come back."""

    def __init__(self, url, body):
        self.url, self.body = url, body
        self.results = []          # (start, end, status or exception text)
        self.lock = threading.Lock()
        self.stop_flag = threading.Event()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(CLIENTS)]

    def run(self):
        s = requests.Session()
        while not self.stop_flag.is_set():
            t0 = time.monotonic()
            try:
                r = s.post(self.url, json=self.body, timeout=30)
                outcome = r.status_code if r.status_code != 200 or "outputs" in r.json() else "bad"
            except Exception as e:  # noqa: BLE001 - every failure is counted
                outcome = repr(e)[:200]
            with self.lock:
                self.results.append((t0, time.monotonic(), outcome))

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop_flag.set()
        for t in self.threads:
            t.join(timeout=60)

    def window(self, start, end):
        with self.lock:
            return [r for r in self.results if r[0] >= start and r[0] < end]


def failures(results):
    return [r for r in results if r[2] != 200]


@pytest.mark.loadbalancer
def test_replica_loss_behind_nginx(ferry, fixtures, nginx):
    case = fixtures.case("churn")
    a = ferry.new("replica-a", ["churn@champion"])
    b = ferry.new("replica-b", ["churn@champion"])
    for srv in (a, b):
        srv.start()
    try:
        for srv in (a, b):
            srv.wait_ready()
        nginx.start([a.addr, b.addr])
        url = f"http://127.0.0.1:{nginx.port}/v2/models/churn/infer"
        with Load(url, json_infer_body(case)) as load:
            time.sleep(2.0)
            # --- SIGTERM A: drains and exits 0, no client notices
            t_term = time.monotonic()
            code = a.terminate()
            assert code == 0, f"replica A exited with {code} after SIGTERM:\n{a.log()}"
            time.sleep(2.0)
            a.start()
            a.wait_ready()
            time.sleep(2.0)
            t_term_end = time.monotonic()
            # --- SIGKILL B: only its in-flight requests may fail
            t_kill = time.monotonic()
            b.proc.send_signal(signal.SIGKILL)
            b.proc.wait(timeout=10)
            time.sleep(2.0)
            b.start()
            b.wait_ready()
            time.sleep(2.0)
            t_end = time.monotonic()
        term = load.window(0, t_term_end)
        kill = load.window(t_kill, t_end)
        in_flight_at_kill = [r for r in load.results if r[0] <= t_kill <= r[1]]
        print(f"\nLB figures: SIGTERM phase sent={len(term)} failed={len(failures(term))}; "
              f"SIGKILL phase sent={len(kill)} failed={len(failures(kill))} "
              f"in-flight at kill={len(in_flight_at_kill)}; total={len(load.results)}")
        assert len(term) > 20 and len(kill) > 20, "the load generator hardly ran"
        assert not failures(term), f"requests failed across SIGTERM: {failures(term)[:5]}"
        kill_failures = failures(kill)
        assert len(kill_failures) <= CLIENTS, f"more failures than in-flight: {kill_failures}"
        # Anything that failed was sent before the kill and finished after it.
        for r in kill_failures:
            assert r[0] <= t_kill + 0.5, f"a request sent after the kill failed: {r}"
        assert t_term < t_term_end
    finally:
        for srv in (a, b):
            srv.kill()
