"""Two ferry replicas behind a real nginx (Debian package, loopback only) running
deploy/nginx/ferry.conf. Under continuous load: replica A gets SIGTERM (drains, exits 0) and no
client request may fail; later replica B is SIGKILLed and restarted: only requests in flight
on B at that moment may fail, and each failure is counted.

Phases start only once nginx's access log shows each replica answering 200s, not after fixed
sleeps: a replica that was just restarted answers 503 while its model loads, which nginx
counts against it (`max_fails`, `fail_timeout`), and a phase must not begin while nginx may
still hold that against it (if B is killed then, a request can find no live upstream). Fixed
sleeps on a loaded machine were the suspected cause of this test's earlier flakiness."""
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
            f"http {{\n    log_format lb '$msec $status \"$upstream_addr\" \"$upstream_status\"';\n"
            f"    access_log {workdir}/access.log lb;\n{temp}"
            + "\n".join(out) + "\n}\n")


@pytest.fixture
def nginx(tmp_path):
    if not os.access(NGINX, os.X_OK):
        pytest.fail("nginx not installed (scripts/setup-test-deps.sh installs Debian's nginx-light)")

    class Nginx:
        port = free_port()
        proc = None
        access_log = tmp_path / "access.log"

        def served_by(self, upstream, since):
            """Requests logged after `since` (epoch s) whose last upstream answered 200."""
            n = 0
            if not self.access_log.exists():
                return 0
            for line in self.access_log.read_text().splitlines():
                t, status, addrs, statuses = line.split(" ", 3)
                last_addr = addrs.strip('"').split(", ")[-1]
                last_status = statuses.strip('"').split(", ")[-1]
                if float(t) >= since and last_addr == upstream and last_status == "200":
                    n += 1
            return n

        def retried(self, since, until):
            """Logged requests in [since, until) that nginx sent to more than one upstream."""
            out = []
            for line in self.access_log.read_text().splitlines():
                t, status, addrs, statuses = line.split(" ", 3)
                if since <= float(t) < until and "," in addrs:
                    out.append((status, addrs, statuses))
            return out

        def wait_serving(self, upstreams, since, n=20, timeout=60):
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if all(self.served_by(u, since) >= n for u in upstreams):
                    return
                time.sleep(0.1)
            pytest.fail(f"nginx did not route {n} answered requests to each of {upstreams} "
                        f"within {timeout}s; error log:\n"
                        + (tmp_path / "error.log").read_text()[-3000:])

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
    # A short drain delay: A keeps serving (Connection: close) after SIGTERM, then refuses
    # connections, which nginx retries on B.
    drain = {"delay": "500ms", "timeout": "20s"}
    a = ferry.new("replica-a", ["churn@champion"], drain=drain)
    b = ferry.new("replica-b", ["churn@champion"], drain=drain)
    for srv in (a, b):
        srv.start()
    try:
        for srv in (a, b):
            srv.wait_ready()
        nginx.start([a.addr, b.addr])
        url = f"http://127.0.0.1:{nginx.port}/v2/models/churn/infer"
        with Load(url, json_infer_body(case)) as load:
            nginx.wait_serving([a.addr, b.addr], since=0)
            # --- SIGTERM A: drains and exits 0, no client notices
            t_term, wall_term = time.monotonic(), time.time()
            code = a.terminate()
            assert code == 0, f"replica A exited with {code} after SIGTERM:\n{a.log()}"
            assert "Draining: no new connections" in a.log(), a.log()
            wall_restart = time.time()
            a.start()
            a.wait_ready()
            nginx.wait_serving([a.addr, b.addr], since=wall_restart)
            t_term_end, wall_term_end = time.monotonic(), time.time()
            # --- SIGKILL B: only its in-flight requests may fail
            t_kill, wall_kill = time.monotonic(), time.time()
            b.proc.send_signal(signal.SIGKILL)
            b.proc.wait(timeout=10)
            time.sleep(1.0)
            wall_restart = time.time()
            b.start()
            b.wait_ready()
            nginx.wait_serving([a.addr, b.addr], since=wall_restart)
            t_end, wall_end = time.monotonic(), time.time()
        term = load.window(t_term, t_term_end)
        kill = load.window(t_kill, t_end)
        before = load.window(0, t_term)
        in_flight_at_kill = [r for r in load.results if r[0] <= t_kill <= r[1]]
        retried_term = nginx.retried(wall_term, wall_term_end)
        retried_kill = nginx.retried(wall_kill, wall_end)
        print(f"\nLB figures: warm-up sent={len(before)} failed={len(failures(before))}; "
              f"SIGTERM phase sent={len(term)} failed={len(failures(term))} "
              f"retried-by-nginx={len(retried_term)}; "
              f"SIGKILL phase sent={len(kill)} failed={len(failures(kill))} "
              f"in-flight at kill={len(in_flight_at_kill)} retried-by-nginx={len(retried_kill)}; "
              f"total={len(load.results)}")
        assert len(term) > 20 and len(kill) > 20, "the load generator hardly ran"
        assert not failures(before), f"requests failed before any fault: {failures(before)[:5]}"
        assert not failures(term), f"requests failed across SIGTERM: {failures(term)[:5]}"
        # Only requests in flight at the kill may fail: sent before it, answered after it.
        kill_failures = failures(kill) + [r for r in failures(in_flight_at_kill)
                                          if r not in kill]
        for r in kill_failures:
            assert r in in_flight_at_kill, f"a request not in flight at the kill failed: {r}"
        assert len(kill_failures) <= len(in_flight_at_kill) <= CLIENTS
    finally:
        for srv in (a, b):
            srv.kill()
