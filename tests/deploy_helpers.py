"""A throwaway Flower deployment on loopback: SuperLink, SuperNodes and the `flwr` CLI as processes.

tests/test_deployment.py runs fedprune through Flower's deployment engine exactly as
docs/DEPLOYMENT.md tells a user to, only on 127.0.0.1 with ports picked free. Everything the
processes write (the Flower configuration file under FLWR_HOME, logs, keys, certificates,
dataset cache) stays in one folder, so nothing touches the user's home. Flower detaches some
children into their own sessions (the SuperLink's SuperExec and the ServerApp it starts), so
``Deployment.close`` kills whole process trees found through /proc, not only process groups.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

EXECUTABLES = ("flower-superlink", "flower-supernode", "flower-superexec", "flwr")
REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on now (the OS picks it, so parallel runs differ)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_certificates(folder: Path) -> dict[str, Path]:
    """A self-signed CA and a server certificate it signs, valid for 127.0.0.1, ::1 and localhost.

    Key identifiers and key usages are set so strict verifiers (Python 3.13's default) accept them.
    """
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedprune test CA")])
    usage = dict(content_commitment=False, key_encipherment=False, data_encipherment=False, key_agreement=False,
                 encipher_only=False, decipher_only=False)
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, key_cert_sign=True, crl_sign=True, **usage),
                         critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP384R1())
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
             x509.IPAddress(ipaddress.ip_address("::1"))]
    server = (x509.CertificateBuilder()
              .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
              .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(start).not_valid_after(end)
              .add_extension(x509.SubjectAlternativeName(names), critical=False)
              .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
              .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False, **usage),
                             critical=True)
              .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
              .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
              .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
              .sign(ca_key, hashes.SHA256()))
    paths = {"ca": folder / "ca.crt", "cert": folder / "server.pem", "key": folder / "server.key"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    return paths


def make_node_key(folder: Path, name: str) -> tuple[Path, Path]:
    """A SuperNode's EC P-384 key pair in OpenSSH format, as `ssh-keygen -t ecdsa -b 384` writes it."""
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private, public = folder / name, folder / f"{name}.pub"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                          serialization.NoEncryption()))
    private.chmod(0o600)
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                     serialization.PublicFormat.OpenSSH) + b"\n")
    return private, public


def _stat(pid: int) -> tuple[int, str, int, int] | None:
    """(parent pid, state, session id, start time) of ``pid`` from /proc; None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), fields[0], int(fields[3]), int(fields[19])


def descendants(roots: list[int]) -> dict[int, int]:
    """Every process below ``roots`` or in a session one of them leads, each with its start time.

    Sessions catch children orphaned when their parent died (Linux never hands out a pid that
    still names a live session, so a session id cannot point at a stranger); start times guard
    against a remembered pid reused later by another process.
    """
    table = {int(entry.name): stat for entry in Path("/proc").iterdir()
             if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None}
    children: dict[int, list[int]] = {}
    for pid, stat in table.items():
        children.setdefault(stat[0], []).append(pid)
    found: dict[int, int] = {}
    todo = [pid for pid in roots if pid in table]
    while todo:
        pid = todo.pop()
        if pid in found:
            continue
        found[pid] = table[pid][3]
        todo.extend(children.get(pid, []))
        todo.extend(other for other, stat in table.items() if stat[2] == pid)
    return found


def alive(pid: int, started: int) -> bool:
    """True while the process ``pid`` that started at ``started`` exists and is not a zombie."""
    stat = _stat(pid)
    return stat is not None and stat[3] == started and stat[1] != "Z"


class Deployment:
    """SuperLink, SuperNodes and `flwr` commands sharing one environment and one folder."""

    def __init__(self, folder: Path, *, tls: bool = False, supernode_auth: bool = False):
        self.folder, self.tls, self.supernode_auth = folder, tls, supernode_auth
        self.home = folder / "flwr-home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.certificates = make_certificates(folder / "certificates") if tls else None
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.processes: dict[str, subprocess.Popen] = {}
        self.seen: dict[int, int] = {}  # pid -> start time of every process found under ours
        self.env = dict(os.environ, FLWR_HOME=str(self.home), FLWR_TELEMETRY_ENABLED="0",
                        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1", FLWR_DISABLE_UPDATE_CHECK="1",
                        FEDPRUNE_CACHE=str(folder / "cache"), HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1",
                        PYTHONUNBUFFERED="1", NO_COLOR="1", TERM="dumb", COLUMNS="200")
        self._write_flower_config()

    def _write_flower_config(self) -> None:
        """The SuperLink connection `flwr run . deployment` uses (Flower 1.41's configuration file)."""
        lines = ["[superlink]", 'default = "deployment"', "", "[superlink.deployment]", f'address = "{self.address}"']
        lines.append(f'root-certificates = "{self.certificates["ca"]}"' if self.tls else "insecure = true")
        (self.home / "config.toml").write_text("\n".join(lines) + "\n")

    def _start(self, name: str, command: list[str]) -> subprocess.Popen:
        log = open(self.folder / f"{name}.log", "wb")
        process = subprocess.Popen(command, cwd=self.folder, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        log.close()
        self.processes[name] = process
        return process

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text(errors="replace")

    def start_superlink(self, timeout: float = 60.0) -> None:
        """Start the SuperLink and wait until its HTTP API answers /health."""
        command = ["flower-superlink", "--host", "127.0.0.1", "--port", str(self.port)]
        if self.tls:
            command += ["--ssl-ca-certfile", str(self.certificates["ca"]),
                        "--ssl-certfile", str(self.certificates["cert"]),
                        "--ssl-keyfile", str(self.certificates["key"])]
        else:
            command += ["--insecure"]
        if self.supernode_auth:
            command += ["--enable-supernode-auth"]
        process = self._start("superlink", command)
        url = f"{'https' if self.tls else 'http'}://{self.address}/health"
        verify = ssl.create_default_context(cafile=self.certificates["ca"]) if self.tls else False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"flower-superlink exited with {process.returncode}:\n{self.log('superlink')}")
            try:
                if httpx.get(url, verify=verify, timeout=1.0).is_success:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"the SuperLink did not answer {url} within {timeout:.0f}s:\n{self.log('superlink')}")

    def start_supernode(self, name: str, partition_id: int, num_partitions: int,
                        private_key: Path | None = None) -> subprocess.Popen:
        """Start a SuperNode that trains partition ``partition_id`` of ``num_partitions``."""
        command = ["flower-supernode", "--superlink", self.address, "--port", str(free_port()),
                   "--node-config", f"partition-id={partition_id} num-partitions={num_partitions}"]
        command += ["--root-certificates", str(self.certificates["ca"])] if self.tls else ["--insecure"]
        if private_key is not None:
            command += ["--auth-supernode-private-key", str(private_key)]
        return self._start(name, command)

    def flwr(self, *args: str, timeout: float = 150.0, cwd: Path = REPO) -> subprocess.CompletedProcess:
        """Run a `flwr` CLI command against this deployment; raises with every log if it fails."""
        self._remember()  # the processes as they are now, in case one dies and orphans its children
        try:
            done = subprocess.run(["flwr", *args], cwd=cwd, env=self.env, capture_output=True, text=True,
                                  timeout=timeout, start_new_session=True)
        except subprocess.TimeoutExpired as error:
            raise TimeoutError(f"flwr {' '.join(args)} ran past {timeout:.0f}s\n"
                               f"{error.stdout}\n{self.logs()}") from None
        if done.returncode != 0:
            raise RuntimeError(f"flwr {' '.join(args)} exited with {done.returncode}:\n{done.stdout}\n{done.stderr}\n"
                               f"{self.logs()}")
        return done

    def logs(self, tail: int = 3000) -> str:
        """The end of every process's log, for failure messages."""
        return "\n".join(f"--- {name}.log\n{self.log(name)[-tail:]}" for name in self.processes)

    def flwr_json(self, *args: str) -> dict:
        """A `flwr ... --format json` command's answer."""
        out = self.flwr(*args, "--format", "json").stdout
        return json.loads(out[out.index("{"):])

    def supernodes(self) -> list[dict]:
        """Every SuperNode the SuperLink knows, with its status (`flwr supernode ls`)."""
        return self.flwr_json("supernode", "ls", "deployment")["nodes"]

    def _remember(self) -> None:
        """Add every process now under ours to what ``close`` kills."""
        self.seen.update(descendants([process.pid for process in self.processes.values()]))

    def close(self) -> list[int]:
        """Kill every process this deployment started, with its whole tree; returns pids still alive."""
        self._remember()
        for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            for pid, started in self.seen.items():
                if alive(pid, started):
                    try:
                        os.kill(pid, sig)
                    except ProcessLookupError:
                        pass
            deadline = time.monotonic() + grace
            for process in self.processes.values():
                try:
                    process.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
            while time.monotonic() < deadline and self._survivors():
                time.sleep(0.1)
            if not self._survivors():
                break
        return self._survivors()

    def _survivors(self) -> list[int]:
        return [pid for pid, started in self.seen.items() if alive(pid, started)]

    def __enter__(self) -> "Deployment":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
